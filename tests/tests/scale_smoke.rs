//! The scale simulator at its small preset: a real manager in this process and 20 simulated nodes in a child
//! `bench scale-agents` run 200 tasks;
//! the run fails if a slot runs other than exactly one task, a task runs on two nodes, or a node is overcommitted.
//! Timings are printed, never asserted (`bench scale` runs the big sizes).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_preset_runs_every_task_exactly_once() {
    let cfg = shoal_tests::scale::ScaleConfig::smoke(env!("CARGO_BIN_EXE_bench").into());
    if let Err(e) = shoal_tests::scale::run(&cfg).await {
        panic!("scale simulator: {e}");
    }
}

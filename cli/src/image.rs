//! `shoal image …`: pull (from a registry, with Docker's per-layer progress), load (a `docker save` / OCI archive,
//! streamed in 1 MiB chunks), ls and rm.

use crate::client::{rpc, Client};
use crate::output::{ago, human_size, print_rows, split_repo_tag, table_of, Format};
use crate::Tally;
use clap::{Args, Subcommand};
use engine_api::{
    ImageInspectRequest, ImageLoadChunk, ImagePullProgress, ImagePullRequest, ImagePushRequest, ImageRemoveRequest,
    ImageSummary, ImageTagRequest,
};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use swarm::api::control::Empty;
use swarm::api::{familiar_image_ref, normalize_image_ref};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Chunk size for `image load`: big enough to keep the per-message overhead (JSON, base64) small, small enough
/// to stay far below the message size limits.
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Set platform if server is multi-platform capable (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    /// NAME[:TAG|@DIGEST]
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    image: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    #[arg(value_name = "NAME[:TAG]")]
    image: String,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    source: String,
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    target: String,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short, long, value_parser = crate::output::check_format)]
    format: Option<String>,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    quiet: bool,
}

pub type LsArgs = crate::output::ListingArgs;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove the image even when a container uses it
    #[arg(short, long)]
    force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub async fn run(client: &mut Client, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Pull(a) => pull(client, a).await,
        ImageCmd::Push(a) => push(client, a).await,
        ImageCmd::Tag(a) => {
            rpc(client.engine.image_tag(ImageTagRequest { source: a.source, target: a.target }).await)?;
            Ok(())
        }
        ImageCmd::Inspect(a) => inspect(client, a).await,
        ImageCmd::Load(a) => load(client, a).await,
        ImageCmd::Ls(a) => ls(client, a).await,
        ImageCmd::Rm(a) => rm(client, a).await,
    }
}

/// Reads `reader` as a stream of chunks. A read error ends the stream and is left in `failure`, so the caller
/// can report the local cause instead of whatever the daemon makes of a truncated archive.
fn chunks(
    reader: Box<dyn AsyncRead + Send + Unpin>,
    failure: Arc<Mutex<Option<std::io::Error>>>,
) -> impl futures::Stream<Item = ImageLoadChunk> + Send + 'static {
    futures::stream::unfold(Some(reader), move |state| {
        let failure = failure.clone();
        async move {
            let mut reader = state?;
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            // Fill whole chunks: small reads (pipes) would otherwise mean many tiny messages.
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(e);
                        }
                        return None;
                    }
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            let next = if filled < CHUNK { None } else { Some(reader) };
            Some((ImageLoadChunk { data: buf }, next))
        }
    })
}

async fn load(client: &mut Client, a: LoadArgs) -> anyhow::Result<()> {
    let reader: Box<dyn AsyncRead + Send + Unpin> = match &a.input {
        Some(path) => {
            Box::new(tokio::fs::File::open(path).await.map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?)
        }
        None => {
            if std::io::stdin().is_terminal() {
                anyhow::bail!("requested load from stdin, but stdin is empty");
            }
            Box::new(tokio::io::stdin())
        }
    };
    let failure = Arc::new(Mutex::new(None));
    let result = client.engine.image_load(chunks(reader, failure.clone())).await;
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        let from = a.input.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdin".into());
        anyhow::bail!("reading {from}: {e}");
    }
    let loaded = rpc(result)?.loaded;
    if !a.quiet {
        for r in &loaded {
            println!("Loaded image: {}", familiar_image_ref(r));
        }
    }
    Ok(())
}

/// Docker's pull output: on a terminal one line per layer, rewritten in place, with a bar while downloading;
/// otherwise a line per status change and no bars (progress lines are dropped, as Docker does).
struct PullRenderer {
    tty: bool,
    /// Layers in the order they first appeared: the line each one owns on a terminal.
    ids: Vec<String>,
}

/// `[=====>      ]  1.2MB/4.5MB`, 50 columns of bar as Docker draws it.
fn progress_bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    if total == 0 {
        return String::new();
    }
    let done = (WIDTH * current.min(total) / total) as usize;
    let bar = if done >= WIDTH as usize {
        "=".repeat(WIDTH as usize)
    } else {
        format!("{}>{}", "=".repeat(done), " ".repeat(WIDTH as usize - done - 1))
    };
    format!("[{bar}]  {}/{}", human_size(current), human_size(total))
}

impl PullRenderer {
    fn new(tty: bool) -> Self {
        PullRenderer { tty, ids: Vec::new() }
    }

    /// What to write for one progress message (possibly nothing).
    fn render(&mut self, p: &ImagePullProgress) -> String {
        if p.id.is_empty() {
            return format!("{}\n", p.status);
        }
        let with_bar = matches!(p.status.as_str(), "Downloading" | "Extracting" | "Pushing");
        if !self.tty {
            return if with_bar { String::new() } else { format!("{}: {}\n", p.id, p.status) };
        }
        let line = if with_bar && p.total > 0 {
            format!("{}: {} {}", p.id, p.status, progress_bar(p.current, p.total))
        } else {
            format!("{}: {}", p.id, p.status)
        };
        match self.ids.iter().position(|i| *i == p.id) {
            None => {
                self.ids.push(p.id.clone());
                format!("{line}\n")
            }
            Some(at) => {
                // Up to the layer's line, clear it, write, and back down below the last line.
                let up = self.ids.len() - at;
                format!("\x1b[{up}A\r\x1b[2K{line}\r\x1b[{up}B")
            }
        }
    }
}

/// The credentials stored for the registry an image comes from (see `shoal login`).
pub fn stored_auth(reference: &str) -> anyhow::Result<Option<engine_api::AuthConfig>> {
    let Ok(name) = normalize_image_ref(reference) else { return Ok(None) };
    let host = engine_api::registry_host(name.split('/').next().unwrap_or(""));
    Ok(crate::login::load_credentials(&crate::login::config_path(), &host)?)
}

/// Prints a pull's or push's progress as it streams in (nothing when quiet); the stream's error is the command's.
async fn show_progress(mut stream: tonic::Streaming<ImagePullProgress>, quiet: bool) -> anyhow::Result<()> {
    let mut renderer = PullRenderer::new(std::io::stdout().is_terminal());
    let mut out = std::io::stdout().lock();
    loop {
        let msg = stream.message().await.map_err(crate::client::DaemonError);
        let Some(p) = msg? else { return Ok(()) };
        if !quiet {
            std::io::Write::write_all(&mut out, renderer.render(&p).as_bytes())?;
            std::io::Write::flush(&mut out)?;
        }
    }
}

pub async fn push(client: &mut Client, a: PushArgs) -> anyhow::Result<()> {
    let auth = stored_auth(&a.image)?;
    let stream = rpc(client.engine.image_push(ImagePushRequest { reference: a.image.clone(), auth }).await)?;
    show_progress(stream, a.quiet).await
}

pub async fn pull(client: &mut Client, a: PullArgs) -> anyhow::Result<()> {
    let auth = stored_auth(&a.image)?;
    let req = ImagePullRequest { reference: a.image.clone(), platform: a.platform.unwrap_or_default(), auth };
    let stream = rpc(client.engine.image_pull(req).await)?;
    show_progress(stream, a.quiet).await?;
    if a.quiet {
        // As `docker pull -q`: the full name pulled.
        let name = normalize_image_ref(&a.image).unwrap_or(a.image);
        println!("{name}");
    }
    Ok(())
}

async fn inspect(client: &mut Client, a: InspectArgs) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    let mut found = Vec::new();
    for image in &a.images {
        let req = ImageInspectRequest { reference: image.clone() };
        found.extend(tally.ok(rpc(client.engine.image_inspect(req).await)));
    }
    if !found.is_empty() {
        crate::output::print_inspected(&found, a.format.as_deref())?;
    }
    tally.finish()
}

/// The IMAGE ID column: 12 hex digits of the digest.
fn short_image_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn created_ago(created: Option<SystemTime>, now: SystemTime) -> String {
    created.map(|t| ago(now.duration_since(t).unwrap_or_default())).unwrap_or_else(|| "N/A".into())
}

/// Docker's CreatedAt: Go's `time.Time.String()` in UTC, "2024-01-01 00:00:00 +0000 UTC".
fn created_at(created: Option<SystemTime>) -> String {
    created
        .map(|t| {
            let rfc = humantime::format_rfc3339_seconds(t).to_string();
            format!("{} +0000 UTC", rfc.trim_end_matches('Z').replace('T', " "))
        })
        .unwrap_or_default()
}

/// `image ls` columns: row field and table title. Of Docker's fields, those the daemon has no data for
/// (Digest, Containers, SharedSize, UniqueSize) are left out rather than filled with made-up values.
const LS_COLUMNS: &[(&str, &str)] =
    &[("Repository", "REPOSITORY"), ("Tag", "TAG"), ("ID", "IMAGE ID"), ("CreatedSince", "CREATED"), ("Size", "SIZE")];

/// Titles of the fields only templates show.
const LS_TITLES: &[(&str, &str)] = &[
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
];

/// The rows of `image ls` with Docker's field names, newest first.
fn ls_rows(images: &mut [ImageSummary], now: SystemTime) -> Vec<Value> {
    // Newest first, as Docker; RFC 3339 strings of one format sort chronologically.
    images.sort_by(|a, b| b.created.cmp(&a.created).then(a.reference.cmp(&b.reference)));
    images
        .iter()
        .map(|i| {
            let (repo, tag) = split_repo_tag(&familiar_image_ref(&i.reference));
            let created = i.created.as_deref().and_then(|c| humantime::parse_rfc3339_weak(c).ok());
            json!({
                "Repository": repo,
                "Tag": tag,
                "ID": short_image_id(&i.id),
                "CreatedSince": created_ago(created, now),
                "CreatedAt": created_at(created),
                "Size": human_size(i.size),
            })
        })
        .collect()
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut images = rpc(client.engine.image_list(Empty {}).await)?.images;
    match format {
        Format::Template(t) => print_rows(&t, &ls_rows(&mut images, SystemTime::now()), LS_TITLES),
        Format::Quiet => {
            // One line per image, not per tag, as `docker images -q`.
            let mut seen = std::collections::HashSet::new();
            for i in &images {
                let id = short_image_id(&i.id);
                if seen.insert(id.clone()) {
                    println!("{id}");
                }
            }
            Ok(())
        }
        Format::Table => {
            table_of(&ls_rows(&mut images, SystemTime::now()), LS_COLUMNS).print();
            Ok(())
        }
    }
}

async fn rm(client: &mut Client, a: RmArgs) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    for image in &a.images {
        let req = ImageRemoveRequest { reference: image.clone(), force: a.force };
        if tally.ok(rpc(client.engine.image_remove(req).await)).is_some() {
            let shown = normalize_image_ref(image).map(|n| familiar_image_ref(&n)).unwrap_or_else(|_| image.clone());
            println!("Untagged: {shown}");
        }
    }
    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[test]
    fn image_rows() {
        let now = humantime::parse_rfc3339("2024-01-15T00:00:00Z").unwrap();
        let mut images = vec![
            ImageSummary {
                reference: "docker.io/library/busybox:latest".into(),
                id: format!("sha256:{}", "ab".repeat(32)),
                created: Some("2024-01-01T00:00:00Z".into()),
                size: 4_263_900,
            },
            ImageSummary {
                reference: "localhost:5000/app:v1".into(),
                id: "sha256:0123456789abcdef".into(),
                created: None,
                size: 512,
            },
        ];
        let rows = ls_rows(&mut images, now);
        assert_eq!(
            rows[0],
            json!({"Repository": "busybox", "Tag": "latest", "ID": "abababababab", "CreatedSince": "2 weeks ago",
                   "CreatedAt": "2024-01-01 00:00:00 +0000 UTC", "Size": "4.26MB"})
        );
        let table = table_of(&rows, LS_COLUMNS).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "REPOSITORY           TAG       IMAGE ID       CREATED       SIZE");
        assert_eq!(lines[2], "localhost:5000/app   v1        0123456789ab   N/A           512B");
        let json = crate::template::Template::parse("json").unwrap().render_rows(&rows, LS_TITLES).unwrap();
        assert_eq!(
            json.lines().next().unwrap(),
            r#"{"CreatedAt":"2024-01-01 00:00:00 +0000 UTC","CreatedSince":"2 weeks ago","ID":"abababababab","Repository":"busybox","Size":"4.26MB","Tag":"latest"}"#
        );
        let t = crate::template::Template::parse("table {{.Repository}}:{{.Tag}}\\t{{.CreatedAt}}").unwrap();
        assert_eq!(
            t.render_rows(&rows[..1], LS_TITLES).unwrap(),
            "REPOSITORY:TAG   CREATED AT\nbusybox:latest   2024-01-01 00:00:00 +0000 UTC\n"
        );
    }

    fn progress(id: &str, status: &str, current: u64, total: u64) -> ImagePullProgress {
        ImagePullProgress { id: id.into(), status: status.into(), current, total }
    }

    #[test]
    fn pull_progress_without_a_terminal_is_a_line_per_status() {
        let mut r = PullRenderer::new(false);
        let out: String = [
            progress("", "v1: Pulling from test/busybox", 0, 0),
            progress("bcecfaad93c7", "Pulling fs layer", 0, 0),
            progress("bcecfaad93c7", "Downloading", 1_000_000, 2_000_000),
            progress("bcecfaad93c7", "Download complete", 2_000_000, 2_000_000),
            progress("bcecfaad93c7", "Pull complete", 0, 0),
            progress("", "Digest: sha256:abc", 0, 0),
        ]
        .iter()
        .map(|p| r.render(p))
        .collect();
        assert_eq!(
            out,
            "v1: Pulling from test/busybox\nbcecfaad93c7: Pulling fs layer\nbcecfaad93c7: Download complete\n\
             bcecfaad93c7: Pull complete\nDigest: sha256:abc\n"
        );
    }

    #[test]
    fn pull_progress_on_a_terminal_rewrites_each_layers_line() {
        let mut r = PullRenderer::new(true);
        assert_eq!(r.render(&progress("aaaaaaaaaaaa", "Pulling fs layer", 0, 0)), "aaaaaaaaaaaa: Pulling fs layer\n");
        assert_eq!(r.render(&progress("bbbbbbbbbbbb", "Already exists", 0, 0)), "bbbbbbbbbbbb: Already exists\n");
        let bar = format!("[{}>{}]  1MB/4MB", "=".repeat(12), " ".repeat(37));
        assert_eq!(progress_bar(1_000_000, 4_000_000), bar);
        assert_eq!(
            r.render(&progress("aaaaaaaaaaaa", "Downloading", 1_000_000, 4_000_000)),
            format!("\x1b[2A\r\x1b[2Kaaaaaaaaaaaa: Downloading {bar}\r\x1b[2B")
        );
        assert_eq!(progress_bar(4, 4), format!("[{}]  4B/4B", "=".repeat(50)));
    }

    #[test]
    fn push_progress_is_docker_s() {
        let lines = [
            progress("", "The push refers to repository [localhost:5000/app]", 0, 0),
            progress("aaaaaaaaaaaa", "Preparing", 0, 0),
            progress("bbbbbbbbbbbb", "Preparing", 0, 0),
            progress("aaaaaaaaaaaa", "Pushing", 1_000_000, 4_000_000),
            progress("aaaaaaaaaaaa", "Pushed", 0, 0),
            progress("bbbbbbbbbbbb", "Layer already exists", 0, 0),
            progress("", "v1: digest: sha256:abc size: 528", 0, 0),
        ];
        let mut r = PullRenderer::new(false);
        let out: String = lines.iter().map(|p| r.render(p)).collect();
        assert_eq!(
            out,
            "The push refers to repository [localhost:5000/app]\naaaaaaaaaaaa: Preparing\nbbbbbbbbbbbb: Preparing\n\
             aaaaaaaaaaaa: Pushed\nbbbbbbbbbbbb: Layer already exists\nv1: digest: sha256:abc size: 528\n",
            "no bars without a terminal"
        );
        let mut r = PullRenderer::new(true);
        let on_tty: Vec<String> = lines.iter().map(|p| r.render(p)).collect();
        let bar = progress_bar(1_000_000, 4_000_000);
        assert_eq!(on_tty[3], format!("\x1b[2A\r\x1b[2Kaaaaaaaaaaaa: Pushing {bar}\r\x1b[2B"));
    }

    #[tokio::test]
    async fn archives_stream_in_full_chunks() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let failure = Arc::new(Mutex::new(None));
        let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(std::io::Cursor::new(data.clone()));
        let got: Vec<ImageLoadChunk> = chunks(reader, failure.clone()).collect().await;
        assert_eq!(got.iter().map(|c| c.data.len()).collect::<Vec<_>>(), vec![CHUNK, CHUNK, 10]);
        assert_eq!(got.concat_data(), data);
        assert!(failure.lock().unwrap().is_none());
    }

    trait Concat {
        fn concat_data(&self) -> Vec<u8>;
    }
    impl Concat for Vec<ImageLoadChunk> {
        fn concat_data(&self) -> Vec<u8> {
            self.iter().flat_map(|c| c.data.iter().copied()).collect()
        }
    }
}

//! `shoal image …`: load (a `docker save` / OCI archive, streamed in 1 MiB chunks), ls and rm.

use crate::client::{rpc, Client};
use crate::output::{ago, human_size, print_json, split_repo_tag, Format, Table};
use crate::Tally;
use clap::{Args, Subcommand};
use engine_api::{ImageLoadChunk, ImageRemoveRequest, ImageSummary};
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
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Force removal of the image
    #[arg(short, long)]
    force: bool,
}

pub async fn run(client: &mut Client, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
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

/// The IMAGE ID column: 12 hex digits of the digest.
fn short_image_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn created_ago(created: Option<&str>, now: SystemTime) -> String {
    created
        .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
        .map(|t| ago(now.duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "N/A".into())
}

fn ls_rows(images: &mut [ImageSummary], now: SystemTime) -> Vec<Vec<String>> {
    // Newest first, as Docker; RFC 3339 strings of one format sort chronologically.
    images.sort_by(|a, b| b.created.cmp(&a.created).then(a.reference.cmp(&b.reference)));
    images
        .iter()
        .map(|i| {
            let (repo, tag) = split_repo_tag(&familiar_image_ref(&i.reference));
            vec![repo, tag, short_image_id(&i.id), created_ago(i.created.as_deref(), now), human_size(i.size)]
        })
        .collect()
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let mut images = rpc(client.engine.image_list(Empty {}).await)?.images;
    match Format::from_flags(a.quiet, a.format) {
        Format::Json => print_json(&images),
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
            let mut t = Table::new(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
            for row in ls_rows(&mut images, SystemTime::now()) {
                t.row(row);
            }
            t.print();
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
        assert_eq!(rows[0], vec!["busybox", "latest", "abababababab", "2 weeks ago", "4.26MB"]);
        assert_eq!(rows[1], vec!["localhost:5000/app", "v1", "0123456789ab", "N/A", "512B"]);
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

//! `shoal login` / `shoal logout`, and the credentials file they share with `image pull`: Docker's `config.json`
//! format (`{"auths": {"SERVER": {"auth": base64("user:password")}}}`) in `$SHOAL_CONFIG/config.json` or
//! `~/.shoal/config.json`. The daemon checks credentials at login; the CLI keeps them and sends them with pulls.

use crate::client::{rpc, Client};
use base64::Engine as _;
use clap::Args;
use engine_api::{registry_host, AuthConfig, RegistryLoginRequest};
use serde_json::{Map, Value};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// Docker Hub's key in config.json, as Docker writes it.
const HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    username: Option<String>,
    /// Password
    #[arg(short, long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// Registry (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

/// Reading or writing the credentials file failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file exists but is not Docker's config.json format.
    #[error("{path}: invalid credentials file: {why}")]
    Invalid { path: String, why: String },
    /// The file or its directory cannot be read or written.
    #[error("{path}: {why}")]
    Io { path: String, why: String },
}

/// Where credentials are kept: `$SHOAL_CONFIG/config.json` (a directory, as `DOCKER_CONFIG`), else
/// `~/.shoal/config.json`.
pub fn config_path() -> PathBuf {
    let dir = match std::env::var_os("SHOAL_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".shoal"),
    };
    dir.join("config.json")
}

/// The key of a server in `auths`: Docker Hub under its legacy URL, others by host[:port].
fn server_key(host: &str) -> String {
    if host == "docker.io" {
        HUB_KEY.into()
    } else {
        host.to_string()
    }
}

fn read_config(path: &Path) -> Result<Map<String, Value>, CredentialsError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        Ok(b) => match serde_json::from_slice::<Value>(&b) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(CredentialsError::Invalid { path: shown, why: "not a JSON object".into() }),
            Err(e) => Err(CredentialsError::Invalid { path: shown, why: e.to_string() }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(CredentialsError::Io { path: shown, why: e.to_string() }),
    }
}

/// Replaces the file whole (temp file + rename), readable by its owner only: it holds passwords.
fn write_config(path: &Path, config: &Map<String, Value>) -> Result<(), CredentialsError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |p: &Path, e: std::io::Error| CredentialsError::Io { path: p.display().to_string(), why: e.to_string() };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    let tmp = dir.join(format!(".config.json.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    let body = serde_json::to_vec_pretty(&Value::Object(config.clone())).expect("json");
    f.write_all(&body).and_then(|_| f.write_all(b"\n")).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The stored credentials for a registry host, if any.
pub fn load_credentials(path: &Path, host: &str) -> Result<Option<AuthConfig>, CredentialsError> {
    let config = read_config(path)?;
    let Some(entry) = config.get("auths").and_then(|a| a.get(server_key(host))) else { return Ok(None) };
    let invalid = |why: &str| CredentialsError::Invalid { path: path.display().to_string(), why: why.into() };
    let Some(auth) = entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|_| invalid(&format!("the auth of {host} is not base64")))?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid(&format!("the auth of {host} is not UTF-8")))?;
    let (username, password) =
        decoded.split_once(':').ok_or_else(|| invalid(&format!("the auth of {host} is not user:password")))?;
    Ok(Some(AuthConfig { username: username.into(), password: password.into() }))
}

/// Stores credentials for a host, keeping every other entry and key of the file.
pub fn store_credentials(path: &Path, host: &str, auth: &AuthConfig) -> Result<(), CredentialsError> {
    let mut config = read_config(path)?;
    let auths = config.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.username, auth.password));
    auths.as_object_mut().expect("an object").insert(server_key(host), serde_json::json!({ "auth": encoded }));
    write_config(path, &config)
}

/// Removes a host's credentials; false if there were none.
pub fn remove_credentials(path: &Path, host: &str) -> Result<bool, CredentialsError> {
    let mut config = read_config(path)?;
    let removed = config.get_mut("auths").and_then(Value::as_object_mut).and_then(|a| a.remove(&server_key(host)));
    if removed.is_none() {
        return Ok(false);
    }
    write_config(path, &config)?;
    Ok(true)
}

/// Reads a line from the terminal with echo off (password and unlock key prompts), or from piped stdin.
pub(crate) fn read_hidden_line() -> std::io::Result<String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr/tcsetattr get a valid fd and pointer.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    if got {
        let mut quiet = term;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if got {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
        eprintln!();
    }
    r.map(|_| line.trim_end_matches(['\n', '\r']).to_string())
}

pub async fn login(client: &mut Client, a: LoginArgs) -> anyhow::Result<()> {
    let host = registry_host(a.server.as_deref().unwrap_or(""));
    let interactive = std::io::stdin().is_terminal();
    let username = match a.username.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if a.password_stdin => anyhow::bail!("Must provide --username with --password-stdin"),
        None if interactive => {
            print!("Username: ");
            std::io::stdout().flush()?;
            let mut u = String::new();
            std::io::stdin().lock().read_line(&mut u)?;
            u.trim().to_string()
        }
        None => anyhow::bail!("Cannot perform an interactive login from a non TTY device"),
    };
    if username.is_empty() {
        anyhow::bail!("Username is required");
    }
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin().read_to_string(&mut p)?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if interactive {
        print!("Password: ");
        std::io::stdout().flush()?;
        read_hidden_line()?
    } else {
        anyhow::bail!("Cannot perform an interactive login from a non TTY device");
    };
    if password.is_empty() {
        anyhow::bail!("Password is required");
    }
    let auth = AuthConfig { username, password };
    let r = rpc(client.engine.registry_login(RegistryLoginRequest { server: host.clone(), auth: auth.clone() }).await)?;
    let path = config_path();
    store_credentials(&path, &host, &auth)?;
    eprintln!("WARNING! Your password will be stored unencrypted in {}.", path.display());
    println!("{}", r.status);
    Ok(())
}

pub fn logout(a: LogoutArgs) -> anyhow::Result<()> {
    let host = registry_host(a.server.as_deref().unwrap_or(""));
    let shown = server_key(&host);
    if remove_credentials(&config_path(), &host)? {
        println!("Removing login credentials for {shown}");
    } else {
        println!("Not logged in to {shown}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_in_dockers_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        assert_eq!(load_credentials(&path, "localhost:5000").unwrap().map(|a| a.username), None);
        let auth = AuthConfig { username: "me".into(), password: "p:w".into() };
        store_credentials(&path, "localhost:5000", &auth).unwrap();
        store_credentials(&path, "docker.io", &AuthConfig { username: "hub".into(), password: "x".into() }).unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["auths"]["localhost:5000"]["auth"], "bWU6cDp3", "base64 of user:password, as Docker");
        assert!(raw["auths"][HUB_KEY]["auth"].is_string(), "Docker Hub under its legacy key: {raw}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let got = load_credentials(&path, "localhost:5000").unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.password.as_str()), ("me", "p:w"));
        assert!(remove_credentials(&path, "localhost:5000").unwrap());
        assert!(!remove_credentials(&path, "localhost:5000").unwrap(), "already gone");
        assert!(load_credentials(&path, "localhost:5000").unwrap().is_none());
        assert_eq!(load_credentials(&path, "docker.io").unwrap().unwrap().username, "hub", "others kept");
    }

    #[test]
    fn other_keys_of_the_file_are_kept_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credsStore":"x","auths":{}}"#).unwrap();
        store_credentials(&path, "r:1", &AuthConfig { username: "a".into(), password: "b".into() }).unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["credsStore"], "x");
        std::fs::write(&path, "[1]").unwrap();
        let e = load_credentials(&path, "r:1").unwrap_err().to_string();
        assert_eq!(e, format!("{}: invalid credentials file: not a JSON object", path.display()));
    }
}

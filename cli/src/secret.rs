//! `shoal secret …` and `shoal config …`: create (from a file or stdin), ls, inspect [--pretty], rm, with Docker's
//! columns and JSON; `secret rotate NAME FILE|-` (beyond Docker) makes a new version and moves its services to
//! it. A secret's data is never shown (the manager does not return it); a config's is, as Docker does.

use crate::client::{rpc, Client};
use crate::network::parse_label;
use crate::output::{ago, check_format, print_inspected, print_rows, short_id, table_of, Format};
use crate::Tally;
use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Read;
use swarm::api::control::{
    CreateConfigRequest, CreateSecretRequest, GetRequest, ListSecretsRequest, RotateSecretRequest,
};
use swarm::api::{Annotations, Config, ConfigSpec, Secret, SecretSpec};

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create a secret from a file or STDIN as content
    Create(CreateArgs),
    /// List secrets
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more secrets
    Inspect(InspectArgs),
    /// Remove one or more secrets
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Create a new version of a secret and update every service using it
    Rotate(RotateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Create a config from a file or STDIN
    Create(CreateArgs),
    /// List configs
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more configs
    Inspect(InspectArgs),
    /// Remove one or more configs
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// A file to read, or "-" for STDIN
    #[arg(value_name = "FILE")]
    file: String,
    /// Labels
    #[arg(short, long = "label", value_parser = parse_label, value_name = "LABEL")]
    labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    quiet: bool,
    /// Format output using a custom template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Format output using a Go template
    #[arg(short, long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
    /// Print the information in a human friendly format
    #[arg(long)]
    pretty: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// A file to read, or "-" for STDIN
    #[arg(value_name = "FILE")]
    file: String,
}

/// The data of `FILE`, or of stdin for "-".
fn read_data(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut data).context("reading stdin")?;
    } else {
        data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    Ok(data)
}

fn annotations(name: String, labels: Vec<(String, String)>) -> Annotations {
    Annotations { name, labels: labels.into_iter().collect() }
}

pub async fn run_secret(client: &mut Client, cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Create(a) => {
            let spec = SecretSpec { data: read_data(&a.file)?, annotations: annotations(a.name, a.labels) };
            let s = rpc(client.control.create_secret(CreateSecretRequest { spec }).await)?;
            println!("{}", s.id);
            Ok(())
        }
        SecretCmd::Ls(a) => {
            let mut secrets = rpc(client.control.list_secrets(ListSecretsRequest::default()).await)?.secrets;
            secrets.sort_by(|a, b| a.spec.annotations.name.cmp(&b.spec.annotations.name));
            let rows: Vec<Value> = secrets.iter().map(secret_row).collect();
            print_ls(&rows, a, SECRET_TITLES)
        }
        SecretCmd::Inspect(a) => {
            let mut tally = Tally::default();
            let mut found = Vec::new();
            for key in a.names {
                found.extend(tally.ok(rpc(client.control.get_secret(GetRequest { id_or_name: key }).await)));
            }
            if a.pretty {
                print!("{}", found.iter().map(secret_pretty).collect::<Vec<_>>().join("\n"));
            } else if !found.is_empty() {
                print_inspected(&found.iter().map(secret_inspected).collect::<Vec<_>>(), a.format.as_deref())?;
            }
            tally.finish()
        }
        SecretCmd::Rm(a) => {
            let mut tally = Tally::default();
            for key in a.names {
                if tally.ok(rpc(client.control.remove_secret(GetRequest { id_or_name: key.clone() }).await)).is_some() {
                    println!("{key}");
                }
            }
            tally.finish()
        }
        SecretCmd::Rotate(a) => {
            let data = read_data(&a.file)?;
            let r = rpc(client.control.rotate_secret(RotateSecretRequest { id_or_name: a.name, data }).await)?;
            println!("{}", r.secret.id);
            for s in r.services {
                eprintln!("service {s} updated to {}", r.secret.spec.annotations.name);
            }
            Ok(())
        }
    }
}

pub async fn run_config(client: &mut Client, cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Create(a) => {
            let spec = ConfigSpec { data: read_data(&a.file)?, annotations: annotations(a.name, a.labels) };
            let c = rpc(client.control.create_config(CreateConfigRequest { spec }).await)?;
            println!("{}", c.id);
            Ok(())
        }
        ConfigCmd::Ls(a) => {
            let mut configs = rpc(client.control.list_configs(ListSecretsRequest::default()).await)?.configs;
            configs.sort_by(|a, b| a.spec.annotations.name.cmp(&b.spec.annotations.name));
            let rows: Vec<Value> = configs.iter().map(config_row).collect();
            print_ls(&rows, a, CONFIG_TITLES)
        }
        ConfigCmd::Inspect(a) => {
            let mut tally = Tally::default();
            let mut found = Vec::new();
            for key in a.names {
                found.extend(tally.ok(rpc(client.control.get_config(GetRequest { id_or_name: key }).await)));
            }
            if a.pretty {
                print!("{}", found.iter().map(config_pretty).collect::<Vec<_>>().join("\n"));
            } else if !found.is_empty() {
                print_inspected(&found.iter().map(config_inspected).collect::<Vec<_>>(), a.format.as_deref())?;
            }
            tally.finish()
        }
        ConfigCmd::Rm(a) => {
            let mut tally = Tally::default();
            for key in a.names {
                if tally.ok(rpc(client.control.remove_config(GetRequest { id_or_name: key.clone() }).await)).is_some() {
                    println!("{key}");
                }
            }
            tally.finish()
        }
    }
}

fn print_ls(rows: &[Value], a: LsArgs, titles: &[(&str, &str)]) -> anyhow::Result<()> {
    match Format::from_flags(a.quiet, a.format.as_deref())? {
        Format::Quiet => {
            for r in rows {
                println!("{}", r["ID"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        Format::Template(t) => print_rows(&t, rows, titles),
        Format::Table => {
            table_of(rows, titles).print();
            Ok(())
        }
    }
}

/// Docker's columns, with VERSION (the rotation number) after the name.
const SECRET_TITLES: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Version", "VERSION"),
    ("Driver", "DRIVER"),
    ("CreatedAt", "CREATED"),
    ("UpdatedAt", "UPDATED"),
];

const CONFIG_TITLES: &[(&str, &str)] =
    &[("ID", "ID"), ("Name", "NAME"), ("CreatedAt", "CREATED"), ("UpdatedAt", "UPDATED")];

fn secret_row(s: &Secret) -> Value {
    json!({
        "ID": short_id(&s.id),
        "Name": s.spec.annotations.name,
        "Version": s.version().to_string(),
        "Driver": "",
        "CreatedAt": ago(s.meta.created_at.elapsed()),
        "UpdatedAt": ago(s.meta.updated_at.elapsed()),
        "Labels": s.spec.annotations.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    })
}

fn config_row(c: &Config) -> Value {
    json!({
        "ID": short_id(&c.id),
        "Name": c.spec.annotations.name,
        "CreatedAt": ago(c.meta.created_at.elapsed()),
        "UpdatedAt": ago(c.meta.updated_at.elapsed()),
        "Labels": c.spec.annotations.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    })
}

fn rfc3339(t: swarm::api::Timestamp) -> String {
    humantime::format_rfc3339_nanos(t.0).to_string()
}

/// `docker secret inspect`'s shape: no data, ever.
fn secret_inspected(s: &Secret) -> Value {
    json!({
        "ID": s.id,
        "Version": {"Index": s.meta.version},
        "CreatedAt": rfc3339(s.meta.created_at),
        "UpdatedAt": rfc3339(s.meta.updated_at),
        "Spec": {"Name": s.spec.annotations.name, "Labels": s.spec.annotations.labels},
        "SecretVersion": {"Family": s.family(), "Version": s.version()},
    })
}

fn config_inspected(c: &Config) -> Value {
    json!({
        "ID": c.id,
        "Version": {"Index": c.meta.version},
        "CreatedAt": rfc3339(c.meta.created_at),
        "UpdatedAt": rfc3339(c.meta.updated_at),
        "Spec": {
            "Name": c.spec.annotations.name,
            "Labels": c.spec.annotations.labels,
            "Data": base64::engine::general_purpose::STANDARD.encode(&c.spec.data),
        },
    })
}

fn labels_pretty(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("\n - {k}={v}")).collect()
}

fn secret_pretty(s: &Secret) -> String {
    format!(
        "ID:              {}\nName:              {}\nLabels:{}\nVersion:           {}\nDriver:            \nCreated at:        {}\nUpdated at:        {}\n",
        s.id,
        s.spec.annotations.name,
        labels_pretty(&s.spec.annotations.labels),
        s.version(),
        rfc3339(s.meta.created_at),
        rfc3339(s.meta.updated_at),
    )
}

fn config_pretty(c: &Config) -> String {
    format!(
        "ID:                      {}\nName:                    {}\nLabels:{}\nCreated at:              {}\nUpdated at:              {}\nData:\n{}\n",
        c.id,
        c.spec.annotations.name,
        labels_pretty(&c.spec.annotations.labels),
        rfc3339(c.meta.created_at),
        rfc3339(c.meta.updated_at),
        String::from_utf8_lossy(&c.spec.data),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: SecretCmd,
    }

    #[test]
    fn create_takes_a_name_a_file_and_labels() {
        let c = Cli::try_parse_from(["secret", "create", "-l", "env=prod", "pw", "-"]).unwrap();
        let SecretCmd::Create(a) = c.cmd else { panic!("not a create") };
        assert_eq!((a.name.as_str(), a.file.as_str()), ("pw", "-"));
        assert_eq!(a.labels, vec![("env".to_string(), "prod".to_string())]);
        assert!(Cli::try_parse_from(["secret", "create", "pw"]).is_err(), "a file is required");
    }

    #[test]
    fn inspect_never_shows_data_and_ls_shows_the_version() {
        let s: Secret = serde_json::from_value(json!({
            "id": "abcdefghijkl0123456789xyz", "spec": {"name": "pw.v2"},
            "rotation": {"family": "pw", "version": 2}
        }))
        .unwrap();
        let v = secret_inspected(&s);
        assert!(v["Spec"].get("Data").is_none());
        assert_eq!(v["SecretVersion"], json!({"Family": "pw", "Version": 2}));
        let row = secret_row(&s);
        assert_eq!((row["ID"].as_str(), row["Version"].as_str()), (Some("abcdefghijkl"), Some("2")));
        assert!(secret_pretty(&s).contains("Name:              pw.v2"));
    }
}

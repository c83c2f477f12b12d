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
use swarm::api::{Annotations, Config, ConfigSpec, Driver, Meta, Secret, SecretSpec};

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
    /// Template driver (the data is a Go template each task renders: "golang")
    #[arg(long, value_parser = parse_template_driver, value_name = "DRIVER")]
    template_driver: Option<String>,
}

fn parse_template_driver(s: &str) -> Result<String, String> {
    swarm::template::check_driver(&Driver { name: s.into(), options: Default::default() })?;
    Ok(s.into())
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

/// The commands secrets and configs share, run by [`run`] for either kind.
enum Common {
    Create(CreateArgs),
    Ls(LsArgs),
    Inspect(InspectArgs),
    Rm(RmArgs),
}

pub async fn run_secret(client: &mut Client, cmd: SecretCmd) -> anyhow::Result<()> {
    let common = match cmd {
        SecretCmd::Create(a) => Common::Create(a),
        SecretCmd::Ls(a) => Common::Ls(a),
        SecretCmd::Inspect(a) => Common::Inspect(a),
        SecretCmd::Rm(a) => Common::Rm(a),
        SecretCmd::Rotate(a) => {
            let data = read_data(&a.file)?;
            let r = rpc(client.control.rotate_secret(RotateSecretRequest { id_or_name: a.name, data }).await)?;
            println!("{}", r.secret.id);
            for s in r.services {
                eprintln!("service {s} updated to {}", r.secret.spec.annotations.name);
            }
            return Ok(());
        }
    };
    run::<Secret>(client, common).await
}

pub async fn run_config(client: &mut Client, cmd: ConfigCmd) -> anyhow::Result<()> {
    let common = match cmd {
        ConfigCmd::Create(a) => Common::Create(a),
        ConfigCmd::Ls(a) => Common::Ls(a),
        ConfigCmd::Inspect(a) => Common::Inspect(a),
        ConfigCmd::Rm(a) => Common::Rm(a),
    };
    run::<Config>(client, common).await
}

async fn run<K: FileObject>(client: &mut Client, cmd: Common) -> anyhow::Result<()> {
    match cmd {
        Common::Create(a) => {
            let annotations = Annotations { name: a.name, labels: a.labels.into_iter().collect() };
            let templating = a.template_driver.map(|name| Driver { name, options: Default::default() });
            let id = K::create(client, annotations, read_data(&a.file)?, templating).await?;
            println!("{id}");
            Ok(())
        }
        Common::Ls(a) => {
            let mut all = K::list(client).await?;
            all.sort_by(|a, b| a.annotations().name.cmp(&b.annotations().name));
            let rows: Vec<Value> = all.iter().map(K::row).collect();
            print_ls(&rows, a, K::TITLES)
        }
        Common::Inspect(a) => {
            let mut tally = Tally::default();
            let mut found = Vec::new();
            for key in a.names {
                found.extend(tally.ok(K::get(client, key).await));
            }
            if a.pretty {
                print!("{}", found.iter().map(K::pretty).collect::<Vec<_>>().join("\n"));
            } else if !found.is_empty() {
                print_inspected(&found.iter().map(K::inspected).collect::<Vec<_>>(), a.format.as_deref())?;
            }
            tally.finish()
        }
        Common::Rm(a) => {
            let mut tally = Tally::default();
            for key in a.names {
                if tally.ok(K::remove(client, key.clone()).await).is_some() {
                    println!("{key}");
                }
            }
            tally.finish()
        }
    }
}

/// What differs between a secret and a config in these commands: the control API calls and how one is shown.
trait FileObject: Sized {
    /// The `ls` columns (field → title).
    const TITLES: &'static [(&'static str, &'static str)];
    fn annotations(&self) -> &Annotations;
    /// Creates one; returns its id.
    async fn create(
        client: &mut Client,
        annotations: Annotations,
        data: Vec<u8>,
        templating: Option<Driver>,
    ) -> anyhow::Result<String>;
    async fn list(client: &mut Client) -> anyhow::Result<Vec<Self>>;
    async fn get(client: &mut Client, key: String) -> anyhow::Result<Self>;
    async fn remove(client: &mut Client, key: String) -> anyhow::Result<()>;
    /// An `ls` row.
    fn row(&self) -> Value;
    /// `inspect`'s JSON, in Docker's shape.
    fn inspected(&self) -> Value;
    /// `inspect --pretty`.
    fn pretty(&self) -> String;
}

/// The [`FileObject`] methods that call the control API: the same for both kinds but for names and types.
macro_rules! control_calls {
    ($spec:ident, $create_req:ident, $create:ident, $list:ident, $listed:ident, $get:ident, $remove:ident) => {
        fn annotations(&self) -> &Annotations {
            &self.spec.annotations
        }

        async fn create(
            client: &mut Client,
            annotations: Annotations,
            data: Vec<u8>,
            templating: Option<Driver>,
        ) -> anyhow::Result<String> {
            let spec = $spec { annotations, data, templating };
            Ok(rpc(client.control.$create($create_req { spec }).await)?.id)
        }

        async fn list(client: &mut Client) -> anyhow::Result<Vec<Self>> {
            Ok(rpc(client.control.$list(ListSecretsRequest::default()).await)?.$listed)
        }

        async fn get(client: &mut Client, key: String) -> anyhow::Result<Self> {
            rpc(client.control.$get(GetRequest { id_or_name: key }).await)
        }

        async fn remove(client: &mut Client, key: String) -> anyhow::Result<()> {
            rpc(client.control.$remove(GetRequest { id_or_name: key }).await).map(drop)
        }
    };
}

impl FileObject for Secret {
    /// Docker's columns, with VERSION (the rotation number) after the name.
    const TITLES: &'static [(&'static str, &'static str)] = &[
        ("ID", "ID"),
        ("Name", "NAME"),
        ("Version", "VERSION"),
        ("Driver", "DRIVER"),
        ("CreatedAt", "CREATED"),
        ("UpdatedAt", "UPDATED"),
    ];

    control_calls!(SecretSpec, CreateSecretRequest, create_secret, list_secrets, secrets, get_secret, remove_secret);

    fn row(&self) -> Value {
        let mut row = common_row(&self.id, &self.meta, &self.spec.annotations);
        row["Version"] = json!(self.version().to_string());
        row["Driver"] = json!("");
        row
    }

    /// No data, ever.
    fn inspected(&self) -> Value {
        let mut v = common_inspected(&self.id, &self.meta, &self.spec.annotations, self.spec.templating.as_ref());
        v["SecretVersion"] = json!({"Family": self.family(), "Version": self.version()});
        v
    }

    fn pretty(&self) -> String {
        format!(
            "ID:              {}\nName:              {}\nLabels:{}\nVersion:           {}\nDriver:            \nCreated at:        {}\nUpdated at:        {}\n",
            self.id,
            self.spec.annotations.name,
            labels_pretty(&self.spec.annotations.labels),
            self.version(),
            rfc3339(self.meta.created_at),
            rfc3339(self.meta.updated_at),
        )
    }
}

impl FileObject for Config {
    const TITLES: &'static [(&'static str, &'static str)] =
        &[("ID", "ID"), ("Name", "NAME"), ("CreatedAt", "CREATED"), ("UpdatedAt", "UPDATED")];

    control_calls!(ConfigSpec, CreateConfigRequest, create_config, list_configs, configs, get_config, remove_config);

    fn row(&self) -> Value {
        common_row(&self.id, &self.meta, &self.spec.annotations)
    }

    fn inspected(&self) -> Value {
        let mut v = common_inspected(&self.id, &self.meta, &self.spec.annotations, self.spec.templating.as_ref());
        v["Spec"]["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(&self.spec.data));
        v
    }

    fn pretty(&self) -> String {
        format!(
            "ID:                      {}\nName:                    {}\nLabels:{}\nCreated at:              {}\nUpdated at:              {}\nData:\n{}\n",
            self.id,
            self.spec.annotations.name,
            labels_pretty(&self.spec.annotations.labels),
            rfc3339(self.meta.created_at),
            rfc3339(self.meta.updated_at),
            String::from_utf8_lossy(&self.spec.data),
        )
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

/// The `ls` fields both kinds have.
fn common_row(id: &str, meta: &Meta, a: &Annotations) -> Value {
    json!({
        "ID": short_id(id),
        "Name": a.name,
        "CreatedAt": ago(meta.created_at.elapsed()),
        "UpdatedAt": ago(meta.updated_at.elapsed()),
        "Labels": a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    })
}

/// The `inspect` fields both kinds have; `Spec.Templating` only when set, as Docker omits an empty one.
fn common_inspected(id: &str, meta: &Meta, a: &Annotations, templating: Option<&Driver>) -> Value {
    let mut v = json!({
        "ID": id,
        "Version": {"Index": meta.version},
        "CreatedAt": rfc3339(meta.created_at),
        "UpdatedAt": rfc3339(meta.updated_at),
        "Spec": {"Name": a.name, "Labels": a.labels},
    });
    if let Some(d) = templating {
        v["Spec"]["Templating"] = json!({"Name": d.name});
        if !d.options.is_empty() {
            v["Spec"]["Templating"]["Options"] = json!(d.options);
        }
    }
    v
}

fn rfc3339(t: swarm::api::Timestamp) -> String {
    humantime::format_rfc3339_nanos(t.0).to_string()
}

fn labels_pretty(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("\n - {k}={v}")).collect()
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
        let c = Cli::try_parse_from(["secret", "create", "--template-driver", "golang", "pw", "f"]).unwrap();
        let SecretCmd::Create(a) = c.cmd else { panic!("not a create") };
        assert_eq!(a.template_driver.as_deref(), Some("golang"));
        let e = Cli::try_parse_from(["secret", "create", "--template-driver", "jinja", "pw", "f"]).unwrap_err();
        assert!(e.to_string().contains("unsupported template driver \"jinja\""), "{e}");
    }

    #[test]
    fn inspect_shows_the_template_driver_and_a_config_s_data() {
        let c: Config = serde_json::from_value(json!({
            "id": "c1", "spec": {"name": "app.conf", "data": "e3suVGFzay5TbG90fX0=", "templating": {"name": "golang"}}
        }))
        .unwrap();
        let v = c.inspected();
        assert_eq!(v["Spec"]["Templating"], json!({"Name": "golang"}));
        assert_eq!(v["Spec"]["Data"], json!("e3suVGFzay5TbG90fX0="));
        let plain: Config = serde_json::from_value(json!({"id": "c2", "spec": {"name": "x", "data": ""}})).unwrap();
        assert!(plain.inspected()["Spec"].get("Templating").is_none());
    }

    #[test]
    fn inspect_never_shows_data_and_ls_shows_the_version() {
        let s: Secret = serde_json::from_value(json!({
            "id": "abcdefghijkl0123456789xyz", "spec": {"name": "pw.v2"},
            "rotation": {"family": "pw", "version": 2}
        }))
        .unwrap();
        let v = s.inspected();
        assert!(v["Spec"].get("Data").is_none());
        assert_eq!(v["SecretVersion"], json!({"Family": "pw", "Version": 2}));
        let row = s.row();
        assert_eq!((row["ID"].as_str(), row["Version"].as_str()), (Some("abcdefghijkl"), Some("2")));
        assert!(s.pretty().contains("Name:              pw.v2"));
    }
}

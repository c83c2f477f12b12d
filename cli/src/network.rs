//! `shoal network …`: create, ls, inspect and rm of swarm-scoped overlay networks, with Docker's flags, columns
//! and JSON shape (the manager picks subnets, gateways and VNIs; the CLI only shows them).

use crate::client::{rpc, Client};
use crate::output::{check_format, print_inspected, print_rows, short_id, table_of, Format};
use crate::Tally;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use swarm::api::control::{CreateNetworkRequest, GetRequest, ListNetworksRequest};
use swarm::api::{Annotations, IpamConfig, Network, NetworkSpec};

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network name
    #[arg(value_name = "NETWORK")]
    name: String,
    /// Driver to manage the Network
    #[arg(short, long, default_value = "overlay", value_name = "DRIVER")]
    driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long, value_name = "SUBNET")]
    subnet: Option<String>,
    /// IPv4 Gateway for the master subnet
    #[arg(long, value_name = "GATEWAY", requires = "subnet")]
    gateway: Option<String>,
    /// Enable manual container attachment
    #[arg(long)]
    attachable: bool,
    /// Restrict external access to the network
    #[arg(long)]
    internal: bool,
    /// Set metadata on a network
    #[arg(long = "label", value_parser = parse_label, value_name = "LABEL")]
    labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    quiet: bool,
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
    /// Do not truncate the output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
    /// Format output using a Go template
    #[arg(short, long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
}

pub async fn run(client: &mut Client, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create(a) => {
            let n = rpc(client.control.create_network(CreateNetworkRequest { spec: create_spec(a) }).await)?;
            println!("{}", n.id);
            Ok(())
        }
        NetworkCmd::Ls(a) => ls(client, a).await,
        NetworkCmd::Inspect(a) => {
            let mut tally = Tally::default();
            let mut found = Vec::new();
            for key in a.networks {
                let n = tally.ok(rpc(client.control.get_network(GetRequest { id_or_name: key }).await));
                found.extend(n.as_ref().map(inspected));
            }
            if !found.is_empty() {
                print_inspected(&found, a.format.as_deref())?;
            }
            tally.finish()
        }
        NetworkCmd::Rm(a) => {
            let mut tally = Tally::default();
            for key in a.networks {
                if tally.ok(rpc(client.control.remove_network(GetRequest { id_or_name: key.clone() }).await)).is_some()
                {
                    println!("{key}");
                }
            }
            tally.finish()
        }
    }
}

/// `--label k=v` (a bare `k` is an empty value), as Docker parses it.
pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid label '{s}': empty name"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn create_spec(a: CreateArgs) -> NetworkSpec {
    let ipam = a.subnet.map(|subnet| IpamConfig { subnet, gateway: a.gateway.unwrap_or_default() });
    NetworkSpec {
        annotations: Annotations { name: a.name, labels: a.labels.into_iter().collect() },
        driver: a.driver,
        ipam,
        attachable: a.attachable,
        internal: a.internal,
        ingress: false,
    }
}

const LS_TITLES: &[(&str, &str)] = &[("ID", "NETWORK ID"), ("Name", "NAME"), ("Driver", "DRIVER"), ("Scope", "SCOPE")];

/// The rows of `network ls` with Docker's field names, sorted by name as Docker does.
fn ls_rows(networks: &mut [Network], no_trunc: bool) -> Vec<Value> {
    networks.sort_by(|a, b| a.spec.annotations.name.cmp(&b.spec.annotations.name));
    networks
        .iter()
        .map(|n| {
            let labels = n.spec.annotations.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
            json!({
                "ID": if no_trunc { n.id.as_str() } else { short_id(&n.id) },
                "Name": n.spec.annotations.name,
                "Driver": n.spec.driver,
                "Scope": "swarm",
                "IPv6": "false",
                "Internal": n.spec.internal.to_string(),
                "Labels": labels.join(","),
                "CreatedAt": n.meta.created_at.to_string(),
            })
        })
        .collect()
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut networks = rpc(client.control.list_networks(ListNetworksRequest::default()).await)?.networks;
    let rows = ls_rows(&mut networks, a.no_trunc);
    match format {
        Format::Quiet => {
            for r in &rows {
                println!("{}", r["ID"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        Format::Template(t) => print_rows(&t, &rows, LS_TITLES),
        Format::Table => {
            table_of(&rows, LS_TITLES).print();
            Ok(())
        }
    }
}

/// A network as `docker network inspect` shows a swarm-scoped overlay network.
fn inspected(n: &Network) -> Value {
    let labels: &BTreeMap<String, String> = &n.spec.annotations.labels;
    json!({
        "Name": n.spec.annotations.name,
        "Id": n.id,
        "Created": n.meta.created_at.to_string(),
        "Scope": "swarm",
        "Driver": n.spec.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}],
        },
        "Internal": n.spec.internal,
        "Attachable": n.spec.attachable,
        "Ingress": n.spec.ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": null,
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string()},
        "Labels": labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: NetworkCmd,
    }

    fn parse(argv: &[&str]) -> Result<NetworkCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("network").chain(argv.iter().copied())).map(|c| c.cmd)
    }

    fn create(argv: &[&str]) -> NetworkSpec {
        match parse(argv).unwrap() {
            NetworkCmd::Create(a) => create_spec(a),
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn create_flags_become_the_spec() {
        let s = create(&[
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.20.0.0/16",
            "--gateway",
            "10.20.0.254",
            "--attachable",
            "--label",
            "team=web",
            "--label",
            "bare",
            "front",
        ]);
        assert_eq!(s.annotations.name, "front");
        assert_eq!(s.driver, "overlay");
        assert_eq!(s.ipam, Some(IpamConfig { subnet: "10.20.0.0/16".into(), gateway: "10.20.0.254".into() }));
        assert!(s.attachable && !s.internal && !s.ingress);
        assert_eq!(s.annotations.labels, [("bare".into(), "".into()), ("team".into(), "web".into())].into());

        let plain = create(&["create", "back"]);
        assert_eq!((plain.driver.as_str(), plain.ipam), ("overlay", None), "overlay and pool addresses by default");
    }

    #[test]
    fn bad_create_flags_are_refused() {
        assert!(parse(&["create", "--gateway", "10.0.0.1", "x"]).is_err(), "--gateway needs --subnet");
        assert!(parse(&["create", "--label", "=v", "x"]).is_err());
        assert!(parse(&["create"]).is_err(), "a name is required");
        assert!(parse(&["rm"]).is_err());
    }

    fn net(id: &str, name: &str) -> Network {
        // Built from JSON so the fixture keeps compiling when the API gains (defaulted) fields.
        serde_json::from_value(json!({
            "id": id, "spec": {"name": name, "driver": "overlay"},
            "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1"
        }))
        .unwrap()
    }

    #[test]
    fn ls_is_dockers_table_sorted_by_name() {
        let mut nets = vec![net("zzzzzzzzzzzz0123456789abc", "web"), net("aaaaaaaaaaaa0123456789abc", "ingress")];
        let rows = ls_rows(&mut nets, false);
        assert_eq!(
            table_of(&rows, LS_TITLES).render(),
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             aaaaaaaaaaaa   ingress   overlay   swarm\n\
             zzzzzzzzzzzz   web       overlay   swarm\n"
        );
        assert_eq!(ls_rows(&mut nets, true)[0]["ID"], "aaaaaaaaaaaa0123456789abc");
    }

    #[test]
    fn inspect_has_dockers_shape() {
        let v = inspected(&net("id1", "web"));
        assert_eq!(v["Name"], "web");
        assert_eq!(v["Scope"], "swarm");
        assert_eq!(v["IPAM"]["Config"][0], json!({"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}));
        assert_eq!(v["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4097");
    }
}

//! `weftctl revoke` / `weftctl unrevoke`: deny a workload's or an identity's certificates mesh-wide (peers
//! refuse them within one push, renewals and new joins are refused), list what is revoked, lift it.

use super::args::ListFormat;
use super::client::Client;
use super::commands::{CommandError, Reply};
use super::render;
use clap::{Args, Subcommand};
use std::time::Duration;
use weft_api::operator::{MeshInfo, Revocation, RevocationTarget};
use weft_certs::SpiffeId;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub const REVOKE_LONG: &str = "\
Revoke the certificates of one registered workload (NAMESPACE/NAME) or of every workload of an identity.
Within one config push every proxy refuses them (new connections and the ones already open), the revoked
proxies' config streams close, their renewals are refused, and the identity (or workload name) cannot
join or register again until `weftctl unrevoke` lifts it. The list lives in the control plane's state
directory; certificates leave it once they have expired.";

pub const REVOKE_EXAMPLES: &str = "\
Examples:
  weftctl revoke workload default/frontend-7d9f
  weftctl revoke identity spiffe://cluster.local/ns/shop/sa/cart
  weftctl revoke identity --namespace shop --service-account cart
  weftctl revoke list
  weftctl unrevoke workload default/frontend-7d9f";

#[derive(Debug, Subcommand)]
pub enum RevokeCommand {
    /// One registered workload, by NAMESPACE/NAME (its pod or proxy name).
    #[command(after_long_help = "Examples:\n  weftctl revoke workload default/frontend-7d9f")]
    Workload { workload: String },
    /// Every workload of an identity: a SPIFFE ID, or --namespace and --service-account.
    #[command(
        after_long_help = "Examples:\n  weftctl revoke identity spiffe://cluster.local/ns/shop/sa/cart\n  \
                           weftctl revoke identity --namespace shop --service-account cart"
    )]
    Identity(IdentityArgs),
    /// What is revoked, with the certificates each revocation denies.
    #[command(after_long_help = "Examples:\n  weftctl revoke list\n  weftctl revoke list -o json")]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ListFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum UnrevokeCommand {
    /// Lift a workload's revocation: its certificates are accepted again (if its key was stolen, leave
    /// it revoked and start the workload under a new name instead).
    #[command(after_long_help = "Examples:\n  weftctl unrevoke workload default/frontend-7d9f")]
    Workload { workload: String },
    /// Lift an identity's revocation.
    #[command(
        after_long_help = "Examples:\n  weftctl unrevoke identity spiffe://cluster.local/ns/shop/sa/cart\n  \
                           weftctl unrevoke identity --namespace shop --service-account cart"
    )]
    Identity(IdentityArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT
    #[arg(conflicts_with_all = ["namespace", "service_account"], required_unless_present_all = ["namespace", "service_account"])]
    pub id: Option<SpiffeId>,
    #[arg(long, requires = "service_account")]
    pub namespace: Option<String>,
    #[arg(long, requires = "namespace")]
    pub service_account: Option<String>,
}

pub async fn revoke(client: &Client, cmd: RevokeCommand, now: u64) -> Result<Reply, CommandError> {
    let target = match cmd {
        RevokeCommand::List { output } => return list(client, output, now).await,
        RevokeCommand::Workload { workload } => workload_target(&workload)?,
        RevokeCommand::Identity(a) => identity_target(client, a).await?,
    };
    let rev: Revocation = client
        .post("/v1/revocations", &target, REQUEST_TIMEOUT)
        .await?;
    Ok(Reply::out(format!(
        "{} revoked: {} unexpired certificate(s) denied\n",
        describe(&rev.target),
        rev.serials.len()
    )))
}

pub async fn unrevoke(client: &Client, cmd: UnrevokeCommand) -> Result<Reply, CommandError> {
    let target = match cmd {
        UnrevokeCommand::Workload { workload } => workload_target(&workload)?,
        UnrevokeCommand::Identity(a) => identity_target(client, a).await?,
    };
    let rev: Revocation = client
        .post("/v1/revocations/remove", &target, REQUEST_TIMEOUT)
        .await?;
    Ok(Reply::out(format!(
        "{} no longer revoked\n",
        describe(&rev.target)
    )))
}

async fn list(client: &Client, output: ListFormat, now: u64) -> Result<Reply, CommandError> {
    let revs: Vec<Revocation> = client.get("/v1/revocations").await?;
    Ok(match output {
        ListFormat::Json => {
            Reply::out(serde_json::to_string_pretty(&revs).expect("revocations serialize") + "\n")
        }
        ListFormat::Table if revs.is_empty() => Reply {
            stdout: String::new(),
            stderr: "nothing is revoked\n".into(),
            exit: super::commands::Exit::Done,
        },
        ListFormat::Table => Reply::out(table(&revs, now)),
    })
}

fn table(revs: &[Revocation], now: u64) -> String {
    let rows: Vec<Vec<String>> = revs
        .iter()
        .map(|r| {
            let (kind, what) = match &r.target {
                RevocationTarget::Workload { namespace, name } => {
                    ("workload", format!("{namespace}/{name}"))
                }
                RevocationTarget::Identity(id) => ("identity", id.to_string()),
            };
            let serials: Vec<&str> = r.serials.iter().map(|s| s.serial.as_str()).collect();
            vec![
                kind.to_string(),
                what,
                render::relative(r.revoked_at, now),
                if serials.is_empty() {
                    "-".to_string()
                } else {
                    serials.join(",")
                },
            ]
        })
        .collect();
    render::table(&["KIND", "TARGET", "REVOKED", "CERTIFICATES"], &rows)
}

fn describe(t: &RevocationTarget) -> String {
    match t {
        RevocationTarget::Workload { namespace, name } => format!("workload {namespace}/{name}"),
        RevocationTarget::Identity(id) => format!("identity {id}"),
    }
}

fn workload_target(s: &str) -> Result<RevocationTarget, CommandError> {
    crate::revocation::workload_target(s).map_err(|e| CommandError::Usage(e.to_string()))
}

async fn identity_target(
    client: &Client,
    a: IdentityArgs,
) -> Result<RevocationTarget, CommandError> {
    if let Some(id) = a.id {
        return Ok(RevocationTarget::Identity(id));
    }
    let (Some(ns), Some(sa)) = (a.namespace, a.service_account) else {
        return Err(CommandError::Usage(
            "give a SPIFFE ID, or --namespace and --service-account".into(),
        ));
    };
    // The trust domain is the mesh's: ask the control plane.
    let mesh: MeshInfo = client.get("/v1/mesh").await?;
    let td = weft_certs::TrustDomain::new(&mesh.trust_domain)
        .map_err(|e| CommandError::Unreadable(e.to_string()))?;
    let id = SpiffeId::for_workload(&td, &ns, &sa)
        .map_err(|e| CommandError::Usage(format!("--namespace/--service-account: {e}")))?;
    Ok(RevocationTarget::Identity(id))
}

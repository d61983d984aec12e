//! The commands that talk to the control plane. Each returns what to print and the exit code; the
//! binary prints it. Resource files are read before the token, so a typo in a path needs neither.

use super::args::{Format, GetArgs, ListFormat, RemoteArgs, RemoteCommand, TokenCommand, WaitArgs};
use super::client::{segment, Client, ClientError, Credentials, REQUEST_TIMEOUT};
use super::files::{self, FilesError};
use super::render;
use std::io::Read;
use std::time::Duration;
use weft_api::operator::{
    ApplyRequest, ApplyResponse, SourceFile, Status, TokenCreated, TokenInfo, TokenRequest,
};
use weft_api::resources::{Kind, Resource};

/// Time allowed on top of a rollout wait for the request itself.
const WAIT_MARGIN: Duration = Duration::from_secs(15);

/// weftctl's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; when waiting, every affected proxy acknowledged the change.
    Done,
    /// Refused or failed: bad input, an error from the control plane, the control plane unreachable.
    Failed,
    /// Bad usage (clap's own code).
    Usage,
    /// Applied, but not acknowledged by every affected proxy (a NACK, a disconnect or the timeout).
    Unconfirmed,
    /// A progressive shift crossed a threshold and was rolled back.
    Threshold,
    /// A progressive shift saw too few requests to judge a step and was rolled back.
    TooFewRequests,
    /// A progressive shift was interrupted (SIGINT, SIGTERM) and rolled back.
    Interrupted,
    /// `why`: the request would be refused (denied, a bad path, no ready endpoint).
    Refused,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unconfirmed => 3,
            Exit::Threshold => 4,
            Exit::TooFewRequests => 5,
            Exit::Refused => 6,
            Exit::Interrupted => 130,
        }
    }
}

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub exit: Exit,
}

impl Reply {
    pub(super) fn out(stdout: String) -> Reply {
        Reply {
            stdout,
            stderr: String::new(),
            exit: Exit::Done,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("the control plane sent a resource this weftctl cannot read: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot watch for Ctrl-C (a shift must be able to roll back): {0}")]
    Signals(std::io::Error),
}

impl CommandError {
    /// The message for stderr: the error, then each detail (e.g. `file.yaml:3: ...`) on its own line.
    pub fn report(&self) -> String {
        let mut out = format!("error: {self}\n");
        if let CommandError::Client(e) = self {
            for d in e.details() {
                out.push_str(&format!("  {d}\n"));
            }
        }
        out
    }
}

/// Runs one command against the control plane; `now` is Unix seconds, for relative times.
pub async fn run(
    remote: &RemoteArgs,
    cmd: RemoteCommand,
    stdin: &mut dyn Read,
    now: u64,
) -> Result<Reply, CommandError> {
    let sources = match &cmd {
        RemoteCommand::Apply(a) => files::collect(&a.files, stdin)?,
        _ => Vec::new(),
    };
    let creds = Credentials::read(&remote.token_file, remote.token_origin)?;
    let client = Client::new(remote.server.clone(), creds);
    match cmd {
        RemoteCommand::Apply(a) => apply(&client, sources, a.dry_run, a.wait).await,
        RemoteCommand::Get(g) => get(&client, &g).await,
        RemoteCommand::Delete(d) => delete(&client, d.kind, &d.namespace, &d.name, d.wait).await,
        RemoteCommand::Token(TokenCommand::Create {
            namespace,
            service_account,
            ttl,
            max_uses,
            workload,
            labels,
        }) => {
            let req = TokenRequest {
                namespace,
                service_account,
                ttl_secs: ttl.get().as_secs(),
                max_uses,
                workload,
                labels: labels.into_iter().collect(),
            };
            token_create(&client, &req, now).await
        }
        RemoteCommand::Token(TokenCommand::List { output }) => {
            token_list(&client, output, now).await
        }
        RemoteCommand::Token(TokenCommand::Revoke { id }) => token_revoke(&client, &id).await,
        RemoteCommand::Revoke(c) => super::revoke::revoke(&client, c, now).await,
        RemoteCommand::Unrevoke(c) => super::revoke::unrevoke(&client, c).await,
        RemoteCommand::Status(s) => status(&client, s.output, now).await,
        // Its progress is printed as it happens, not at the end.
        RemoteCommand::Shift(a) if a.progressive.to.is_some() => {
            super::progressive::run(&client, a, &mut std::io::stdout()).await
        }
        RemoteCommand::Shift(a) => shift(&client, a).await,
        RemoteCommand::Rollback(a) => rollback(&client, a).await,
        RemoteCommand::Stat(a) => super::top::stat(&client, a).await,
        // Refreshes are printed as they come.
        RemoteCommand::Top(a) => super::top::top(&client, a, &mut std::io::stdout()).await,
        RemoteCommand::Why(a) => super::why::why(&client, a).await,
    }
}

/// `weftctl shift`: edit the service's route and apply it.
pub async fn shift(client: &Client, a: super::args::ShiftArgs) -> Result<Reply, CommandError> {
    use super::shift::{self as sh, Shift};
    let change = match &a.header {
        None => Shift::Weights(sh::parse_weights(&a.targets).map_err(CommandError::Usage)?),
        Some(h) => {
            let (name, value) = h.split_once('=').ok_or_else(|| {
                CommandError::Usage(format!("--header {h:?}: expected NAME=VALUE"))
            })?;
            let [subset] = a.targets.as_slice() else {
                return Err(CommandError::Usage(
                    "with --header, give exactly one SUBSET".into(),
                ));
            };
            Shift::Header {
                name: name.to_ascii_lowercase(),
                value: value.to_string(),
                subset: subset.clone(),
            }
        }
    };
    let route = current_route(client, &a.namespace, &a.service)
        .await?
        .unwrap_or_else(|| sh::new_route(&a.namespace, &a.service));
    let (route, line) = sh::apply_shift(route, &a.service, &change).map_err(CommandError::Usage)?;
    apply_route(client, route, line, a.wait).await
}

/// `weftctl rollback`: the weights before the last shift.
pub async fn rollback(
    client: &Client,
    a: super::args::RollbackArgs,
) -> Result<Reply, CommandError> {
    let route = current_route(client, &a.namespace, &a.service)
        .await?
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "no HTTPRoute {}/{} to roll back",
                a.namespace, a.service
            ))
        })?;
    let (route, line) = super::shift::rollback(route, &a.service).map_err(CommandError::Usage)?;
    apply_route(client, route, line, a.wait).await
}

pub(super) async fn current_route(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Option<serde_json::Value>, CommandError> {
    let path = format!(
        "/v1/resources/{}/{}/{}",
        Kind::HttpRoute.as_str(),
        segment(namespace),
        segment(service)
    );
    match client.get::<Vec<serde_json::Value>>(&path).await {
        Ok(found) => Ok(found.into_iter().next()),
        Err(ClientError::Refused { status, .. }) if status == http::StatusCode::NOT_FOUND => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn apply_route(
    client: &Client,
    route: serde_json::Value,
    line: String,
    wait: WaitArgs,
) -> Result<Reply, CommandError> {
    // JSON is YAML: the route goes through the same validation as any applied file.
    let file = weft_api::operator::SourceFile {
        name: "weftctl shift".into(),
        text: serde_json::to_string_pretty(&route).unwrap_or_default(),
    };
    let mut reply = apply(client, vec![file], false, wait).await?;
    reply.stdout = format!("{line}\n{}", reply.stdout);
    Ok(reply)
}

pub async fn apply(
    client: &Client,
    files: Vec<SourceFile>,
    dry_run: bool,
    wait: WaitArgs,
) -> Result<Reply, CommandError> {
    let wait = wait.wait().filter(|_| !dry_run);
    let path = format!("/v1/apply{}", query(dry_run, wait));
    let resp: ApplyResponse = client
        .post(&path, &ApplyRequest { files }, request_timeout(wait))
        .await?;
    Ok(changed(&resp))
}

pub async fn delete(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    wait: WaitArgs,
) -> Result<Reply, CommandError> {
    let wait = wait.wait();
    let path = format!(
        "/v1/resources/{}/{}/{}{}",
        kind.as_str(),
        segment(namespace),
        segment(name),
        query(false, wait)
    );
    let resp: ApplyResponse = client.delete(&path, request_timeout(wait)).await?;
    Ok(changed(&resp))
}

/// The printout of an apply or delete, exiting 3 when a rollout did not complete.
fn changed(resp: &ApplyResponse) -> Reply {
    let mut reply = Reply::out(render::apply(resp));
    if resp.rollout.as_ref().is_some_and(|r| !r.complete) {
        reply.exit = Exit::Unconfirmed;
    }
    reply
}

/// `?dryRun=true&wait=<ms>`, leaving out what does not apply.
fn query(dry_run: bool, wait: Option<weft_api::Duration>) -> String {
    let mut q = Vec::new();
    if dry_run {
        q.push("dryRun=true".to_string());
    }
    if let Some(w) = wait {
        q.push(format!("wait={}", w.get().as_millis()));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn request_timeout(wait: Option<weft_api::Duration>) -> Duration {
    wait.map_or(REQUEST_TIMEOUT, |w| w.get() + WAIT_MARGIN)
}

pub async fn get(client: &Client, args: &GetArgs) -> Result<Reply, CommandError> {
    let kind = args.kind;
    // One MeshConfig per mesh: without -n, look for it everywhere.
    let every_namespace =
        args.all_namespaces || (kind == Kind::MeshConfig && args.namespace.is_none());
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut path = format!("/v1/resources/{}", kind.as_str());
    if !every_namespace {
        path.push('/');
        path.push_str(&segment(namespace));
        if let Some(name) = &args.name {
            path.push('/');
            path.push_str(&segment(name));
        }
    }
    let found: Vec<serde_json::Value> = client.get(&path).await?;
    let one = args.name.is_some();
    let format = args
        .output
        .unwrap_or(if one { Format::Yaml } else { Format::Table });
    if found.is_empty() {
        let scope = if every_namespace {
            "any namespace".to_string()
        } else {
            format!("namespace {namespace}")
        };
        let mut reply = Reply::out(match format {
            Format::Json => "[]\n".into(),
            _ => String::new(),
        });
        reply.stderr = format!("no {kind} resources found in {scope}\n");
        return Ok(reply);
    }
    Ok(Reply::out(show(kind, found, one, format)?))
}

fn show(
    kind: Kind,
    found: Vec<serde_json::Value>,
    one: bool,
    format: Format,
) -> Result<String, CommandError> {
    if format == Format::Json {
        let value = match (one, found.len()) {
            (true, 1) => found.into_iter().next().unwrap_or_default(),
            _ => serde_json::Value::Array(found),
        };
        return Ok(pretty(&value));
    }
    let resources = found
        .into_iter()
        .map(Resource::from_json)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::Unreadable(e.to_string()))?;
    Ok(match format {
        Format::Yaml => resources
            .iter()
            .map(Resource::to_yaml)
            .collect::<Vec<_>>()
            .join("---\n"),
        _ => render::resources(kind, &resources),
    })
}

pub async fn token_create(
    client: &Client,
    req: &TokenRequest,
    now: u64,
) -> Result<Reply, CommandError> {
    let created: TokenCreated = client.post("/v1/tokens", req, REQUEST_TIMEOUT).await?;
    let info = &created.info;
    Ok(Reply {
        stdout: format!("{}\n", created.token),
        stderr: format!(
            "join token {} for {}: expires {} ({})\n",
            info.id,
            info.identity,
            render::utc(info.expires_at),
            render::relative(info.expires_at, now)
        ),
        exit: Exit::Done,
    })
}

pub async fn token_list(
    client: &Client,
    output: ListFormat,
    now: u64,
) -> Result<Reply, CommandError> {
    let tokens: Vec<TokenInfo> = client.get("/v1/tokens").await?;
    Ok(match output {
        ListFormat::Json => Reply::out(pretty(&tokens)),
        ListFormat::Table if tokens.is_empty() => Reply {
            stdout: String::new(),
            stderr: "no join tokens\n".into(),
            exit: Exit::Done,
        },
        ListFormat::Table => Reply::out(render::tokens(&tokens, now)),
    })
}

pub async fn token_revoke(client: &Client, id: &str) -> Result<Reply, CommandError> {
    let info: TokenInfo = client
        .delete(&format!("/v1/tokens/{}", segment(id)), REQUEST_TIMEOUT)
        .await?;
    Ok(Reply::out(format!(
        "join token {} for {} revoked\n",
        info.id, info.identity
    )))
}

pub async fn status(client: &Client, output: ListFormat, now: u64) -> Result<Reply, CommandError> {
    let status: Status = client.get("/v1/status").await?;
    if output == ListFormat::Json {
        return Ok(Reply::out(pretty(&status)));
    }
    let summary = render::status_summary(status.revision, &status.proxies);
    let stdout = if status.proxies.is_empty() {
        String::new()
    } else {
        render::status(&status.proxies, now)
    };
    Ok(Reply {
        stdout,
        stderr: summary,
        exit: Exit::Done,
    })
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("API types always serialize");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args;
    use crate::cli::client::TokenOrigin;
    use crate::cli::testing::Peer;
    use http::{Method, StatusCode};

    const NOW: u64 = 1_800_000_000;

    fn temp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("weftctl-cmd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Parses a command line and runs it against `peer` with a token file in `dir`.
    async fn weftctl(
        peer: &Peer,
        dir: &std::path::Path,
        line: &[&str],
        stdin: &str,
    ) -> Result<Reply, CommandError> {
        let token = dir.join("operator.token");
        std::fs::write(&token, "op-token\n").unwrap();
        let mut argv = vec!["weftctl", "--server", &peer.url];
        let token_arg = token.to_str().unwrap();
        argv.extend(["--token-file", token_arg]);
        argv.extend(line);
        let cli = args::parse(argv).unwrap();
        let args::Command::Remote(cmd) = cli.command else {
            panic!("not a remote command")
        };
        run(&cli.remote, cmd, &mut stdin.as_bytes(), NOW).await
    }

    fn apply_answer(complete: Option<bool>) -> String {
        use weft_api::operator::{Change, ChangeAction, ProxyRollout, Rollout, RolloutState};
        use weft_api::resources::ResourceKey;
        let proxy = |name: &str, state| ProxyRollout {
            proxy: format!("default/{name}"),
            version: 9,
            state,
            replica: None,
        };
        let rollout = complete.map(|c| Rollout {
            revision: 5,
            complete: c,
            waited_ms: 120,
            proxies: vec![
                proxy("a-1", RolloutState::Acked),
                proxy(
                    "b-1",
                    if c {
                        RolloutState::Acked
                    } else {
                        RolloutState::Nacked {
                            reason: "regex too large".into(),
                        }
                    },
                ),
            ],
        });
        let resp = ApplyResponse {
            dry_run: false,
            revision: 5,
            changes: vec![Change {
                key: ResourceKey {
                    kind: Kind::Service,
                    namespace: "default".into(),
                    name: "reviews".into(),
                },
                action: ChangeAction::Configured,
                diff: String::new(),
            }],
            rollout,
        };
        serde_json::to_string(&resp).unwrap()
    }

    #[tokio::test]
    async fn apply_sends_files_and_waits() {
        let dir = temp("apply");
        std::fs::write(dir.join("b.yaml"), "kind: B\n").unwrap();
        std::fs::write(dir.join("a.yml"), "kind: A\n").unwrap();
        let peer = Peer::start(StatusCode::OK, apply_answer(Some(true))).await;
        let d = dir.to_str().unwrap();
        let reply = weftctl(&peer, &dir, &["apply", "-f", d, "-f", "-"], "kind: C\n")
            .await
            .unwrap();
        assert_eq!(reply.exit, Exit::Done);
        assert_eq!(
            reply.stdout,
            "service default/reviews configured\nacked by 2/2 proxies in 120 ms\n"
        );
        let req = peer.only();
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.uri, "/v1/apply?wait=10000");
        assert_eq!(req.auth.as_deref(), Some("Bearer op-token"));
        let files = req.json()["files"].clone();
        assert_eq!(
            files,
            serde_json::json!([
                {"name": format!("{d}/a.yml"), "text": "kind: A\n"},
                {"name": format!("{d}/b.yaml"), "text": "kind: B\n"},
                {"name": "-", "text": "kind: C\n"},
            ])
        );
    }

    #[tokio::test]
    async fn apply_not_acked_everywhere_exits_3_and_names_the_proxy() {
        let dir = temp("nack");
        let f = dir.join("r.yaml");
        std::fs::write(&f, "x").unwrap();
        let peer = Peer::start(StatusCode::OK, apply_answer(Some(false))).await;
        let reply = weftctl(
            &peer,
            &dir,
            &["apply", "-f", f.to_str().unwrap(), "--timeout", "3s"],
            "",
        )
        .await
        .unwrap();
        assert_eq!(reply.exit, Exit::Unconfirmed);
        assert_eq!(reply.exit.code(), 3);
        assert!(
            reply.stdout.contains("NOT confirmed: acked by 1/2 proxies"),
            "{}",
            reply.stdout
        );
        assert!(
            reply
                .stdout
                .contains("  default/b-1: NACK: regex too large"),
            "{}",
            reply.stdout
        );
        assert_eq!(peer.only().uri, "/v1/apply?wait=3000");
    }

    #[tokio::test]
    async fn apply_dry_run_and_no_wait_queries() {
        let dir = temp("dry");
        let f = dir.join("r.yaml");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_str().unwrap();
        for (flags, uri) in [
            (&["--dry-run"][..], "/v1/apply?dryRun=true"),
            (&["--no-wait"][..], "/v1/apply"),
            (&["--dry-run", "--no-wait"][..], "/v1/apply?dryRun=true"),
        ] {
            let peer = Peer::start(StatusCode::OK, apply_answer(None)).await;
            let mut line = vec!["apply", "-f", f];
            line.extend(flags);
            let reply = weftctl(&peer, &dir, &line, "").await.unwrap();
            assert_eq!(reply.exit, Exit::Done);
            assert_eq!(peer.only().uri, uri, "{flags:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_apply_reports_every_problem() {
        let dir = temp("refused");
        let f = dir.join("r.yaml");
        std::fs::write(&f, "x").unwrap();
        let peer = Peer::start(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"error":"apply refused: 2 problem(s); nothing was changed","details":["r.yaml:3: field `spec.ports`: missing","r.yaml:9: unknown kind \"Pod\""]}"#,
        )
        .await;
        let e = weftctl(&peer, &dir, &["apply", "-f", f.to_str().unwrap()], "")
            .await
            .unwrap_err();
        assert_eq!(
            e.report(),
            "error: apply refused: 2 problem(s); nothing was changed\n  \
             r.yaml:3: field `spec.ports`: missing\n  \
             r.yaml:9: unknown kind \"Pod\"\n"
        );
    }

    #[tokio::test]
    async fn bad_files_fail_before_anything_is_sent_and_a_missing_token_before_the_request() {
        let dir = temp("order");
        let peer = Peer::start(StatusCode::OK, "{}").await;
        let e = weftctl(&peer, &dir, &["apply", "-f", "/nonexistent/x.yaml"], "")
            .await
            .unwrap_err();
        assert!(matches!(e, CommandError::Files(_)), "{e}");
        let remote = RemoteArgs {
            server: peer.url.parse().unwrap(),
            token_file: dir.join("no-such-token"),
            token_origin: TokenOrigin::Flag,
        };
        let cmd = RemoteCommand::Status(args::StatusArgs {
            output: ListFormat::Table,
        });
        let e = run(&remote, cmd, &mut std::io::empty(), NOW)
            .await
            .unwrap_err();
        assert!(
            e.report().contains("no-such-token (given by --token-file)"),
            "{}",
            e.report()
        );
        assert!(peer.seen().is_empty());
    }

    const SERVICE: &str = r#"{"apiVersion":"weft.dev/v1","kind":"Service","metadata":{"name":"reviews","namespace":"shop"},"spec":{"ports":[{"port":9080,"protocol":"http"}],"selector":{"app":"reviews"}}}"#;

    #[tokio::test]
    async fn get_paths_and_formats() {
        let dir = temp("get");
        let list = format!("[{SERVICE}]");
        for (line, uri, starts) in [
            (
                &["get", "svc"][..],
                "/v1/resources/Service/default",
                "NAMESPACE  NAME     PORTS",
            ),
            (
                &["get", "svc", "-n", "shop"][..],
                "/v1/resources/Service/shop",
                "NAMESPACE",
            ),
            (
                &["get", "services", "-A"][..],
                "/v1/resources/Service",
                "NAMESPACE",
            ),
            (
                &["get", "svc", "reviews", "-n", "shop"][..],
                "/v1/resources/Service/shop/reviews",
                "apiVersion: weft.dev/v1\nkind: Service\n",
            ),
            (
                &["get", "svc", "-o", "yaml"][..],
                "/v1/resources/Service/default",
                "apiVersion: weft.dev/v1",
            ),
            (
                &["get", "svc", "-o", "json"][..],
                "/v1/resources/Service/default",
                "[\n",
            ),
            (
                &["get", "svc", "reviews", "-o", "json"][..],
                "/v1/resources/Service/default/reviews",
                "{\n",
            ),
            (
                &["get", "route", "r", "-o", "table"][..],
                "/v1/resources/HTTPRoute/default/r",
                "NAMESPACE",
            ),
        ] {
            let peer = Peer::start(StatusCode::OK, list.clone()).await;
            let reply = weftctl(&peer, &dir, line, "").await.unwrap();
            let req = peer.only();
            assert_eq!(
                (req.method, req.uri.as_str()),
                (Method::GET, uri),
                "{line:?}"
            );
            assert!(
                reply.stdout.starts_with(starts),
                "{line:?}:\n{}",
                reply.stdout
            );
        }
    }

    #[tokio::test]
    async fn get_meshconfig_looks_everywhere_and_empty_lists_say_so() {
        let dir = temp("mesh");
        let peer = Peer::start(StatusCode::OK, "[]").await;
        let reply = weftctl(&peer, &dir, &["get", "meshconfig"], "")
            .await
            .unwrap();
        assert_eq!(peer.only().uri, "/v1/resources/MeshConfig");
        assert_eq!(reply.stdout, "");
        assert_eq!(
            reply.stderr,
            "no MeshConfig resources found in any namespace\n"
        );
        assert_eq!(reply.exit, Exit::Done);
    }

    #[tokio::test]
    async fn get_a_missing_resource_and_an_unreadable_one() {
        let dir = temp("missing");
        let peer = Peer::start(
            StatusCode::NOT_FOUND,
            r#"{"error":"Service default/nope not found"}"#,
        )
        .await;
        let e = weftctl(&peer, &dir, &["get", "svc", "nope"], "")
            .await
            .unwrap_err();
        assert_eq!(e.report(), "error: Service default/nope not found\n");
        let peer = Peer::start(StatusCode::OK, r#"[{"kind":"Gadget"}]"#).await;
        let e = weftctl(&peer, &dir, &["get", "svc"], "").await.unwrap_err();
        assert!(matches!(e, CommandError::Unreadable(_)), "{e}");
    }

    #[tokio::test]
    async fn delete_waits_unless_told_not_to() {
        let dir = temp("delete");
        let answer = r#"{"dryRun":false,"revision":6,"changes":[{"key":{"kind":"HTTPRoute","namespace":"shop","name":"r"},"action":"deleted"}],"rollout":{"revision":6,"proxies":[],"complete":true,"waitedMs":0}}"#;
        let peer = Peer::start(StatusCode::OK, answer).await;
        let reply = weftctl(&peer, &dir, &["delete", "route", "r", "-n", "shop"], "")
            .await
            .unwrap();
        let req = peer.only();
        assert_eq!(
            (req.method, req.uri.as_str()),
            (Method::DELETE, "/v1/resources/HTTPRoute/shop/r?wait=10000")
        );
        assert_eq!(
            reply.stdout,
            "httproute shop/r deleted\nno proxy's configuration changed\n"
        );
        let peer = Peer::start(StatusCode::OK, answer).await;
        weftctl(&peer, &dir, &["delete", "route", "r", "--no-wait"], "")
            .await
            .unwrap();
        assert_eq!(peer.only().uri, "/v1/resources/HTTPRoute/default/r");
    }

    const TOKEN_INFO: &str = r#"{"id":"t1","namespace":"shop","serviceAccount":"cart","identity":"spiffe://weft.local/ns/shop/sa/cart","createdAt":1800000000,"expiresAt":1800003600,"revoked":false,"uses":0}"#;

    #[tokio::test]
    async fn token_create_prints_only_the_token_on_stdout() {
        let dir = temp("token");
        let peer = Peer::start(
            StatusCode::CREATED,
            format!(r#"{{"token":"wjt.t1.secret","info":{TOKEN_INFO}}}"#),
        )
        .await;
        let reply = weftctl(
            &peer,
            &dir,
            &[
                "token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                "cart",
                "--ttl",
                "1h",
            ],
            "",
        )
        .await
        .unwrap();
        assert_eq!(reply.stdout, "wjt.t1.secret\n");
        assert_eq!(
            reply.stderr,
            "join token t1 for spiffe://weft.local/ns/shop/sa/cart: expires 2027-01-15 09:00:00 UTC (in 1h)\n"
        );
        let req = peer.only();
        assert_eq!(
            (&req.method, req.uri.as_str()),
            (&Method::POST, "/v1/tokens")
        );
        assert_eq!(
            req.json(),
            serde_json::json!({"namespace": "shop", "serviceAccount": "cart", "ttlSecs": 3600})
        );
    }

    #[tokio::test]
    async fn token_list_and_revoke() {
        let dir = temp("tokens");
        let peer = Peer::start(StatusCode::OK, format!("[{TOKEN_INFO}]")).await;
        let reply = weftctl(&peer, &dir, &["token", "list"], "").await.unwrap();
        assert!(reply.stdout.starts_with("ID  IDENTITY"), "{}", reply.stdout);
        assert!(
            reply
                .stdout
                .contains("t1  spiffe://weft.local/ns/shop/sa/cart  valid  in 1h    0     now"),
            "{}",
            reply.stdout
        );
        let peer = Peer::start(StatusCode::OK, format!("[{TOKEN_INFO}]")).await;
        let reply = weftctl(&peer, &dir, &["token", "list", "-o", "json"], "")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(v[0]["id"], "t1");
        let peer = Peer::start(StatusCode::OK, TOKEN_INFO).await;
        let reply = weftctl(&peer, &dir, &["token", "revoke", "t1"], "")
            .await
            .unwrap();
        assert_eq!(
            reply.stdout,
            "join token t1 for spiffe://weft.local/ns/shop/sa/cart revoked\n"
        );
        let req = peer.only();
        assert_eq!(
            (req.method, req.uri.as_str()),
            (Method::DELETE, "/v1/tokens/t1")
        );
    }

    #[tokio::test]
    async fn status_table_and_json() {
        let dir = temp("status");
        let body = r#"{"revision":7,"proxies":[{"proxy":"default/a-1","identity":"spiffe://weft.local/ns/default/sa/a","address":"10.0.0.7","connected":true,"ready":true,"sentVersion":9,"ackedVersion":9,"certNotAfter":1800086400,"lastSeenMs":2000}]}"#;
        let peer = Peer::start(StatusCode::OK, body).await;
        let reply = weftctl(&peer, &dir, &["status"], "").await.unwrap();
        assert_eq!(reply.stderr, "config revision 7: 1/1 proxies connected\n");
        let row = reply.stdout.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "default/a-1  spiffe://weft.local/ns/default/sa/a  10.0.0.7  yes    yes        9     9      -          in 1d         2s ago"
        );
        let peer = Peer::start(StatusCode::OK, body).await;
        let reply = weftctl(&peer, &dir, &["status", "-o", "json"], "")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(v["proxies"][0]["ackedVersion"], 9);
        let peer = Peer::start(StatusCode::OK, "{\"revision\":1}").await;
        let e = weftctl(&peer, &dir, &["status"], "").await.unwrap_err();
        assert!(
            e.report().contains("unexpected answer") && e.report().contains("proxies"),
            "{}",
            e.report()
        );
    }

    #[tokio::test]
    async fn status_across_replicas_counts_per_replica() {
        let dir = temp("status-replicas");
        let row = |name: &str, replica: &str, connected: bool| {
            format!(
                r#"{{"proxy":"default/{name}","identity":"spiffe://weft.local/ns/default/sa/a","address":"10.0.0.7","connected":{connected},"ready":true,"sentVersion":9,"ackedVersion":9,"lastSeenMs":0,"replica":"{replica}","sentRevision":12,"ackedRevision":12}}"#
            )
        };
        let body = format!(
            r#"{{"revision":12,"replica":"r-a","proxies":[{},{},{}]}}"#,
            row("a-1", "r-a", true),
            row("b-1", "r-b", true),
            row("b-2", "r-b", false)
        );
        let peer = Peer::start(StatusCode::OK, body.clone()).await;
        let reply = weftctl(&peer, &dir, &["status"], "").await.unwrap();
        assert_eq!(
            reply.stderr,
            "config revision 12: 2/3 proxies connected (replica r-a: 1/1, replica r-b: 1/2)\n"
        );
        let lines: Vec<&str> = reply.stdout.lines().collect();
        assert!(
            lines[0].starts_with("PROXY        REPLICA  IDENTITY"),
            "{}",
            lines[0]
        );
        assert!(
            lines[3].starts_with("default/b-2  r-b      spiffe://"),
            "{}",
            lines[3]
        );
        let peer = Peer::start(StatusCode::OK, body).await;
        let reply = weftctl(&peer, &dir, &["status", "-o", "json"], "")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(v["proxies"][1]["replica"], "r-b");
        assert_eq!(v["proxies"][1]["ackedRevision"], 12);
    }
}

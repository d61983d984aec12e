//! `weftctl`: the Weft operator CLI. Arguments, the API client, commands and rendering live in
//! `weft_control::cli`; this file wires them to the process (stdin, stdout, exit codes) and runs the
//! offline `ca` / `cert` commands.

use anyhow::Context as _;
use std::process::ExitCode;
use weft_control::ca_dir::CaDir;
use weft_control::cli::args::{
    self, CaCommand, CertCommand, Command, NetworkCommand, PodCommand, RemoteArgs, RemoteCommand,
};
use weft_control::cli::commands::{self, Exit, Reply};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let exit = match args::parse(std::env::args_os()) {
        Ok(cli) => match cli.command {
            Command::Remote(cmd) => remote(&cli.remote, cmd),
            Command::Ca(cmd) => offline(ca(cmd)),
            Command::Cert(cmd) => offline(cert(cmd)),
            Command::Pod(cmd) => pod(&cli.remote, cmd),
            Command::Network(cmd) => offline(network(cmd)),
        },
        Err(e) => usage(&e),
    };
    ExitCode::from(exit.code())
}

/// clap's own message; --help and --version are not errors.
fn usage(e: &clap::Error) -> Exit {
    let _ = e.print();
    if e.use_stderr() {
        Exit::Usage
    } else {
        Exit::Done
    }
}

fn remote(opts: &RemoteArgs, cmd: RemoteCommand) -> Exit {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Failed;
        }
    };
    let mut stdin = std::io::stdin().lock();
    match rt.block_on(commands::run(opts, cmd, &mut stdin, now())) {
        Ok(reply) => emit(&reply),
        Err(e) => {
            write_lossy(&mut std::io::stderr(), &e.report());
            Exit::Failed
        }
    }
}

/// `pod run` exits with its app's code; list and delete as other commands.
fn pod(opts: &RemoteArgs, cmd: PodCommand) -> Exit {
    use weft_control::pod;
    match cmd {
        PodCommand::List { network, run_dir } => {
            offline(Ok(pod::list(&run_dir, network.as_deref())))
        }
        PodCommand::Delete {
            name,
            network,
            run_dir,
        } => offline(pod::delete(&run_dir, network.as_deref(), &name).map_err(anyhow::Error::msg)),
        PodCommand::Run(a) => {
            let code = pod_run(opts, *a);
            std::process::exit(code)
        }
    }
}

fn pod_run(opts: &RemoteArgs, a: args::PodRunArgs) -> i32 {
    use weft_control::cli::client::{Client, Credentials};
    use weft_control::pod::runner::{self, RunOptions};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let creds = match Credentials::read(&opts.token_file, opts.token_origin) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let client = Client::new(opts.server.clone(), creds);
    let o = RunOptions {
        network: a.network,
        cidr: a.cidr,
        node: a.node,
        run_dir: a.run_dir,
        name: a.name,
        namespace: a.namespace,
        service_account: a.service_account,
        service: a.service,
        labels: a.labels,
        ports: a.ports,
        mtls_mode: a.mtls_mode,
        readiness_http: a.readiness_http,
        access_log_sample: a.access_log_sample,
        trace_collector: a.trace_collector,
        trace_format: a.trace_format.as_str(),
        proxy_limits: a.proxy_limits,
        proxy_bin: a.proxy_bin,
        user: a.user,
        proxy_user: a.proxy_user,
        command: a.command,
    };
    match rt.block_on(runner::run(&client, o)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn network(cmd: NetworkCommand) -> anyhow::Result<String> {
    use weft_control::pod;
    match cmd {
        NetworkCommand::Create {
            name,
            cidr,
            nodes,
            run_dir,
        } => pod::network_create(&run_dir, &name, cidr, nodes),
        NetworkCommand::Delete {
            name,
            force,
            run_dir,
        } => pod::network_delete(&run_dir, &name, force),
        NetworkCommand::List { run_dir } => Ok(pod::network_list(&run_dir)),
        NetworkCommand::Partition {
            name,
            node,
            run_dir,
        } => pod::network_connect(&run_dir, &name, &node, false),
        NetworkCommand::Heal {
            name,
            node,
            run_dir,
        } => pod::network_connect(&run_dir, &name, &node, true),
    }
    .map_err(anyhow::Error::msg)
}

fn emit(reply: &Reply) -> Exit {
    write_lossy(&mut std::io::stdout().lock(), &reply.stdout);
    write_lossy(&mut std::io::stderr(), &reply.stderr);
    reply.exit
}

/// Output closed early (`weftctl get svc | head`) is not worth a panic.
fn write_lossy(w: &mut dyn std::io::Write, text: &str) {
    let _ = w.write_all(text.as_bytes()).and_then(|()| w.flush());
}

fn offline(result: anyhow::Result<String>) -> Exit {
    match result {
        Ok(line) => {
            write_lossy(&mut std::io::stdout(), &line);
            Exit::Done
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failed
        }
    }
}

fn ca(cmd: CaCommand) -> anyhow::Result<String> {
    let CaCommand::Init {
        dir,
        trust_domain,
        validity,
        intermediate,
    } = cmd;
    let ca = CaDir::init(&dir, &trust_domain, validity.get(), intermediate)?;
    Ok(format!(
        "created CA for trust domain {} in {} ({})\n",
        ca.ca.trust_domain(),
        dir.display(),
        if intermediate {
            "root + intermediate"
        } else {
            "root"
        }
    ))
}

fn cert(cmd: CertCommand) -> anyhow::Result<String> {
    let CertCommand::Issue {
        ca_dir,
        id,
        ttl,
        out,
    } = cmd;
    let ca = CaDir::open(&ca_dir)?;
    let files = ca
        .issue(&id, ttl.get(), &out)
        .with_context(|| format!("cannot issue a certificate for {id}"))?;
    Ok(format!(
        "issued {id} (valid {ttl}): {} {} {}\n",
        files.cert.display(),
        files.key.display(),
        files.bundle.display()
    ))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

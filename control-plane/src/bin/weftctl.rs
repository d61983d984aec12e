//! `weftctl`: the Weft operator CLI. Arguments, the API client, commands and rendering live in
//! `weft_control::cli`; this file wires them to the process (stdin, stdout, exit codes) and runs the
//! offline `ca` / `cert` commands.

use anyhow::Context as _;
use std::process::ExitCode;
use weft_control::ca_dir::CaDir;
use weft_control::cli::args::{self, CaCommand, CertCommand, Command, RemoteArgs, RemoteCommand};
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

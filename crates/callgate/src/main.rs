//! The `callgate` binary: command-line parsing and process setup only. Everything it runs
//! lives in the library crates.
#![forbid(unsafe_code)]

#[macro_use]
mod out;
mod approvals_cmd;
mod audit_cmd;
mod commands;
mod ocsf;
mod tools_cmd;

/// mimalloc rather than glibc's allocator: every audited call allocates its records on a
/// runtime worker and frees them on another thread (the audit writer, SQLite's thread), which
/// glibc's per-thread arenas handle poorly. With audit on it took 9–13 % less gateway CPU per
/// request in two alternating series (BENCHMARKS.md). Its `secure` mode (guard pages, encoded
/// free lists) measured slower than glibc and is not used; Callgate's own code is safe Rust.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "callgate",
    version,
    about = "A gateway that governs function calls: identity, policy, approvals, audit, forwarding."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file (relative paths in it are relative to its directory).
        #[arg(long, env = "CALLGATE_CONFIG", default_value = "callgate.yaml")]
        config: PathBuf,
        /// Listen address (overrides `listen` in the config).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the self-contained demo (gateway, demo upstream, development IdP).
    Demo {
        #[command(subcommand)]
        command: Option<DemoCommand>,
        /// Where the demo's gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo keeps its config, policies and keys.
        #[arg(long, default_value = "callgate-demo")]
        data_dir: PathBuf,
    },
    /// Validate the config and its policies; exit non-zero with file:line messages on error.
    /// Upstream MCP servers are asked for their tools first, as `serve` does (tools met for
    /// the first time are pinned), so policies naming them are checked.
    Check {
        /// The config file (relative paths in it are relative to its directory).
        #[arg(long, env = "CALLGATE_CONFIG", default_value = "callgate.yaml")]
        config: PathBuf,
    },
    /// Show the decision for a call without forwarding anything.
    Explain {
        /// The config file (relative paths in it are relative to its directory).
        #[arg(long, env = "CALLGATE_CONFIG", default_value = "callgate.yaml")]
        config: PathBuf,
        /// The caller's subject.
        #[arg(long = "as")]
        subject: String,
        /// The caller's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        /// `context.request.time`, Unix seconds (default: now).
        #[arg(long)]
        time: Option<u64>,
        /// `context.request.source_ip` (default 127.0.0.1).
        #[arg(long)]
        source_ip: Option<std::net::IpAddr>,
        /// `context.request.ingress`: proxy, invoke (default) or mcp.
        #[arg(long, value_parser = ["proxy", "invoke", "mcp"])]
        ingress: Option<String>,
        /// `context.request.auth_method`: oidc (default) or api_key.
        #[arg(long, value_parser = ["oidc", "api_key"])]
        auth: Option<String>,
        /// The function's name, such as billing.reset_account.
        function: String,
        /// Arguments as a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
    },
    /// Run policy test cases (caller, function, arguments → allow, deny, held or invalid).
    Test {
        /// The YAML file of cases.
        cases: PathBuf,
        /// Config to test against (default: the `config:` named in the cases file).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config format.
    Schema,
    /// Print a new API key and the hash to put in the config.
    Keygen,
    /// Read and verify the tamper-evident audit log.
    Audit {
        /// The config file (relative paths in it are relative to its directory).
        #[arg(
            long,
            env = "CALLGATE_CONFIG",
            default_value = "callgate.yaml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// Pinned definitions of upstream MCP tools: list, diff, approve a changed one.
    Tools {
        /// The config file (relative paths in it are relative to its directory).
        #[arg(
            long,
            env = "CALLGATE_CONFIG",
            default_value = "callgate.yaml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: tools_cmd::ToolsCommand,
    },
    /// Review held calls and grants on a running gateway.
    Approvals {
        #[command(flatten)]
        remote: approvals_cmd::Remote,
        #[command(subcommand)]
        command: approvals_cmd::ApprovalsCommand,
    },
    /// Follow or cancel your held calls on a running gateway.
    Calls {
        #[command(flatten)]
        remote: approvals_cmd::Remote,
        #[command(subcommand)]
        command: approvals_cmd::CallsCommand,
    },
    /// Ask for, list or end temporary group memberships on a running gateway.
    Grants {
        #[command(flatten)]
        remote: approvals_cmd::Remote,
        #[command(subcommand)]
        command: approvals_cmd::GrantsCommand,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Print a bearer credential for a demo user (alice, bob, carol, dave, erin, ci-bot).
    Token {
        /// alice, bob, carol, dave, erin or ci-bot.
        user: String,
        /// Issue the token to an agent acting for the user (an RFC 8693 `act` claim).
        #[arg(long = "act")]
        actor: Option<String>,
        /// The running demo's base URL.
        #[arg(
            long,
            env = "CALLGATE_GATEWAY",
            default_value = "http://127.0.0.1:8080"
        )]
        gateway: String,
    },
    /// Run only the demo's bank-ops upstream (for load tests against a direct connection).
    Upstream {
        /// Where bank-ops listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
}

fn main() -> ExitCode {
    // Every file Callgate writes — stores, keys, pins, published checkpoints, the demo's data —
    // is its owner's alone.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // As many open connections as the system lets this process have: the soft limit on file
    // descriptors (often 1,024) is raised to the hard one.
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let l = getrlimit(Resource::Nofile);
        if l.maximum.is_some_and(|m| l.current.is_some_and(|c| c < m)) {
            let _ = setrlimit(
                Resource::Nofile,
                rustix::process::Rlimit {
                    current: l.maximum,
                    maximum: l.maximum,
                },
            );
        }
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve { config, listen } => commands::serve(&config, listen).await,
            Command::Demo {
                command:
                    Some(DemoCommand::Token {
                        user,
                        actor,
                        gateway,
                    }),
                ..
            } => commands::demo_token(&user, actor.as_deref(), &gateway).await,
            Command::Demo {
                command: Some(DemoCommand::Upstream { listen }),
                ..
            } => commands::demo_upstream(&listen).await,
            Command::Demo {
                command: None,
                listen,
                data_dir,
            } => commands::demo(&listen, &data_dir).await,
            Command::Check { config } => commands::check(&config).await,
            Command::Explain {
                config,
                subject,
                groups,
                json,
                time,
                source_ip,
                ingress,
                auth,
                function,
                arguments,
            } => {
                let request = callgate_policy::cases::CaseRequest {
                    time,
                    source_ip,
                    ingress: ingress.map(|i| match i.as_str() {
                        "proxy" => callgate_core::Ingress::Proxy,
                        "mcp" => callgate_core::Ingress::Mcp,
                        _ => callgate_core::Ingress::Invoke,
                    }),
                    auth: auth.map(|a| match a.as_str() {
                        "api_key" => callgate_policy::cases::CaseAuth::ApiKey,
                        _ => callgate_policy::cases::CaseAuth::Oidc,
                    }),
                };
                commands::explain(
                    &config, subject, groups, &function, &arguments, request, json,
                )
            }
            Command::Test { cases, config } => commands::test(&cases, config.as_deref()),
            Command::Schema => commands::schema(),
            Command::Keygen => commands::keygen(),
            Command::Audit { config, command } => audit_cmd::run(&config, command).await,
            Command::Tools { config, command } => tools_cmd::run(&config, command),
            Command::Approvals { remote, command } => {
                approvals_cmd::approvals(&remote, command).await
            }
            Command::Calls { remote, command } => approvals_cmd::calls(&remote, command).await,
            Command::Grants { remote, command } => approvals_cmd::grants(&remote, command).await,
        }
    });
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing left to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `pigeon` command: serve, check a configuration, print the example one, edit a password
//! file, run the benchmark.
//!
//! Exit codes: 0 after a graceful shutdown or a successful command; 1 on a runtime error (a
//! listener that cannot bind, a failed benchmark); 2 on a configuration or usage error.
//! Serving stops gracefully at the first SIGINT or SIGTERM; a second one exits at once.
//! Logs go to stderr, filtered by RUST_LOG (default `info`); command output goes to stdout.

mod bench;
mod passwd;

use clap::{CommandFactory, Parser, Subcommand};
use pigeon_server::config::{Config, DEFAULT_CONFIG};
use pigeon_server::Server;
use std::error::Error;
use std::io::{self, IsTerminal, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Two blocks of every connection (its task and its I/O registration) are cache aligned: pooled,
/// they cost what they hold (see `pigeon_server::alloc`).
#[global_allocator]
static ALLOC: pigeon_server::alloc::Pooled = pigeon_server::alloc::Pooled;

const CONFIG_ERROR: u8 = 2;
const RUNTIME_ERROR: u8 = 1;

/// Pigeon, an MQTT broker.
///
/// With no arguments, serves the built-in defaults: MQTT on 127.0.0.1:1883, MQTT over WebSocket on
/// ws://127.0.0.1:8083/mqtt, HTTP on 127.0.0.1:18083, sessions kept in the embedded store in ./data.
/// With --config FILE, serves what FILE describes; `pigeon default-config` prints a commented
/// example listing every key. Stops gracefully on SIGINT or SIGTERM (a second one exits at once).
///
/// Logs go to stderr; RUST_LOG sets the level (default: info), e.g. RUST_LOG=debug.
///
/// Exit codes: 0 success, 1 runtime error, 2 configuration or usage error.
#[derive(Debug, Parser)]
#[command(name = "pigeon", version, verbatim_doc_comment)]
struct Cli {
    /// Serve with the configuration in FILE (TOML) instead of the built-in defaults.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Worker threads of the runtime [default: one per CPU core].
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<NonZeroUsize>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file: print `FILE: ok`, or its first error (exit code 2).
    CheckConfig {
        /// The TOML file to check; `-` reads standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a commented example configuration listing every key with its default value.
    DefaultConfig,
    /// Load a broker with MQTT clients and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Add, change or delete users of a password file (mosquitto_passwd's format and options).
    Passwd(passwd::PasswdArgs),
}

fn parse_threads(text: &str) -> Result<NonZeroUsize, String> {
    match text.parse::<usize>() {
        Ok(n) => NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.config.as_deref(), cli.threads),
        Some(command) => {
            if cli.config.is_some() {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--config is for serving; `check-config` takes the file as its argument",
                    )
                    .exit();
            }
            match command {
                Command::CheckConfig { file } => check_config(&file),
                Command::DefaultConfig => print_stdout(DEFAULT_CONFIG),
                Command::Bench(args) => bench(args, cli.threads),
                Command::Passwd(args) => match passwd::run(args) {
                    Ok(done) => print_stdout(&format!("{done}\n")),
                    Err(error) => {
                        eprintln!("error: {error}");
                        ExitCode::from(RUNTIME_ERROR)
                    }
                },
            }
        }
    }
}

fn serve(config_path: Option<&Path>, threads: Option<NonZeroUsize>) -> ExitCode {
    let config = match config_path {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(CONFIG_ERROR);
            }
        },
        None => Config::default(),
    };
    init_logging();
    let result = block_on(threads, async move {
        // Signal handlers are installed before binding, so a signal that arrives while the
        // listeners come up is not lost (nor does it kill the process mid-bind).
        let shutdown = shutdown_signal()
            .map_err(|error| format!("cannot install the SIGINT/SIGTERM handlers: {error}"))?;
        let server = Server::bind(config).await?;
        server.run(shutdown).await?;
        Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", chain(&*error));
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    let result = if file == Path::new("-") {
        let mut text = String::new();
        match io::stdin().read_to_string(&mut text) {
            Ok(_) => Config::from_toml_str(&text, "<stdin>"),
            Err(error) => {
                eprintln!("cannot read standard input: {error}");
                return ExitCode::from(CONFIG_ERROR);
            }
        }
    } else {
        Config::load(file)
    };
    let result = result
        .map_err(|error| error.to_string())
        .and_then(|config| pigeon_server::check_files(&config).map_err(|error| chain(&error)));
    match result {
        Ok(()) => {
            let name = if file == Path::new("-") {
                "<stdin>".into()
            } else {
                file.display().to_string()
            };
            print_stdout(&format!("{name}: ok\n"))
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(CONFIG_ERROR)
        }
    }
}

fn bench(args: bench::BenchArgs, threads: Option<NonZeroUsize>) -> ExitCode {
    init_logging();
    match block_on(threads, async move {
        bench::run(args).await.map_err(Into::into)
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", chain(&*error));
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

/// Runs `task` on a multi-threaded runtime built for it.
fn block_on<F>(threads: Option<NonZeroUsize>, task: F) -> Result<(), BoxError>
where
    F: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("pigeon-worker");
    if let Some(threads) = threads {
        builder.worker_threads(threads.get());
    }
    let runtime = builder
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let result = runtime.block_on(task);
    // Tasks still running after `run` returned are past their shutdown; don't wait on them long.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Resolves at the first SIGINT or SIGTERM. A second one exits the process at once, for a
/// shutdown that hangs (the handlers replace the default action, so Ctrl-C alone would not).
fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal = name,
            "shutting down; send the signal again to exit at once"
        );
        let _ = first_tx.send(());
        let code = tokio::select! {
            _ = interrupt.recv() => 128 + 2,
            _ = terminate.recv() => 128 + 15,
        };
        tracing::warn!("second signal: exiting without waiting for the shutdown to finish");
        std::process::exit(code);
    });
    Ok(async move {
        // An error means the signal task is gone (runtime shutting down): stop as well.
        let _ = first_rx.await;
    })
}

/// What is logged when RUST_LOG is unset: `info`, without rustls' warning about clients that send
/// an IP address as the TLS server name (mosquitto's clients do; it is not the client's error).
const DEFAULT_LOG: &str = "info,rustls=error";

/// Logs to stderr; RUST_LOG picks what, `DEFAULT_LOG` when it is unset.
fn init_logging() {
    let (filter, invalid) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => {
            let set = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
            (EnvFilter::new(DEFAULT_LOG), set.then(|| error.to_string()))
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    if let Some(error) = invalid {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// Writes to stdout; a closed pipe (`pigeon default-config | head`) is not an error.
fn print_stdout(text: &str) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot write to standard output: {error}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

/// An error and its causes on one line, skipping a cause whose text the message already holds.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! `cargo xtask`: parse the command line, find the repository root, dispatch to the task.
//!
//! Exit status: 0 on success, 1 when a task fails, 2 for a wrong command line (from clap),
//! 124 when a wait timed out, 130 on Ctrl-C (SIGINT), 143 on SIGTERM, 129 on SIGHUP.

// The layers, each looking only down: `cli` (the command line) over `tasks` (what each command
// does), over `stack` (compose and Swarm stacks, their services, data and edge), over `image`
// (our images: catalogue, builds, versions, bundles, signatures), over `oci` (registries and
// archives) and `wait` (readiness), over `run` (the process door, signals, output, run labels).
#[macro_use]
mod run;

mod cli;
mod image;
mod oci;
mod stack;
mod tasks;
mod wait;

use std::process::ExitCode;

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};

use crate::cli::{Bench, Cli, Command};
use crate::image::{bundle, verify, version};
use crate::run::{interrupt, plan, progress};
use crate::tasks::{bench, ci, db, dev, doctor, faults, prod, reap, release};

fn main() -> ExitCode {
    // The image catalogue first: the command line names its images.
    if let Err(err) = image::load_catalogue(&project_root()) {
        say!("error: {err:#}");
        return ExitCode::from(1);
    }
    let cli = cli::parse(&app_version());
    interrupt::install();
    match run(cli) {
        // A signal during the clean-up of a run that succeeded still ends it as interrupted.
        Ok(()) if interrupt::is_set() => ExitCode::from(interrupt::exit_code()),
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say!("error: {err:#}");
            let code = if err.is::<interrupt::Interrupted>() || err.is::<interrupt::Abandoned>() {
                interrupt::exit_code()
            } else if err.is::<wait::TimedOut>() {
                124
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = project_root();
    if let Some((task, json)) = read_only_dry_run(&cli.command) {
        plan::nothing_to_plan(task, json);
        return Ok(());
    }
    match cli.command {
        Command::Version(args) => version::run(&root, args.json),
        Command::Build(args) => {
            quiet_progress(args.preview.json);
            image::run(&root, &(&args).into(), args.preview.into())
        }
        Command::Release(args) => {
            quiet_progress(args.preview.json);
            release::run(&root, &(&args).into(), args.preview.into())
        }
        Command::Verify(args) => verify::run(&root, &(&args).into(), args.json),
        Command::Images(args) => {
            let (action, preview) = args.action.into_request();
            quiet_progress(preview.json);
            bundle::run(&root, action, preview)
        }
        Command::WaitFor(args) => wait::run(&args.into()),
        Command::Dev(args) => {
            let preview = args.preview.into();
            dev::dev(&root, args.into(), preview)
        }
        Command::Test(args) => dev::test(&root, &args.into()),
        Command::Prod(args) => {
            prod::run(&root, args.action.into(), args.env_file, args.preview.into())
        }
        Command::Db(args) => db::run(&root, args.action.into(), args.preview.into()),
        Command::Run(args) => dev::run(&root, &args.into()),
        Command::Reap(args) => reap::reap(&root, args.dry_run, args.json),
        Command::Doctor(args) => doctor::run(&args.into()),
        Command::Ci(args) => ci::run(&root, &args.into()),
        Command::FaultProxy(args) if args.dry_run => {
            let note = format!(
                "would listen on 127.0.0.1 (a free port, printed on stdout) and forward to {}, \
                 failing {:.0}% of requests picked by seed {} (a delay holds a request {:?}); it \
                 changes nothing else, and stops on Ctrl-C",
                args.upstream,
                args.rate * 100.0,
                args.seed,
                args.delay
            );
            plan::Plan::new("fault-proxy".to_owned()).note(note).print(false);
            Ok(())
        }
        Command::FaultProxy(args) => faults::run(
            &args.upstream,
            faults::FaultPlan { rate: args.rate, seed: args.seed, delay: args.delay },
        ),
        Command::Completions { shell, .. } => cli::print_completions(shell),
        Command::Bench(args) if args.dry_run => {
            let names = match &args.bench {
                Some(bench) => vec![bench.name()],
                None => vec!["wait", "stack", "build", "startup"],
            };
            let plan = names.iter().fold(plan::Plan::new("bench".to_owned()), |plan, name| {
                plan.note(format!("runs `bench {name}`: {}", cli::bench_about(name)))
            });
            plan.print(args.json);
            Ok(())
        }
        Command::Bench(args) => {
            let (report, json) = match args.bench {
                None => return bench::all(&root, args.json),
                Some(Bench::Build { runs, json }) => (bench::build(&root, runs)?, json),
                Some(Bench::Wait { runs, json }) => (bench::wait(&root, runs)?, json),
                Some(Bench::Stack { runs, json }) => (bench::stack(&root, runs)?, json),
                Some(Bench::Release { runs, json }) => (bench::release(&root, runs)?, json),
                Some(Bench::Cache { runs, json }) => (bench::cache(&root, runs)?, json),
                Some(Bench::Flaky { runs, rate, json }) => (bench::flaky(&root, runs, rate)?, json),
                Some(Bench::Startup { runs, json }) => (bench::startup(&root, runs)?, json),
                Some(Bench::Devloop { runs, json }) => (bench::devloop(&root, runs)?, json),
                Some(Bench::Deploy { runs, json }) => (bench::deploy(&root, runs)?, json),
            };
            report.print(json);
            Ok(())
        }
    }
}

/// What `--version` prints: the app's version (`app/pyproject.toml`), which every task builds,
/// tags and releases, and the xtask crate's.
fn app_version() -> String {
    let xtask = env!("CARGO_PKG_VERSION");
    let pyproject = std::fs::read_to_string(project_root().join(version::PYPROJECT));
    match pyproject.map_err(anyhow::Error::from).and_then(|t| version::version_from_pyproject(&t)) {
        Ok(app) => format!("{app} (the app; xtask {xtask})"),
        Err(err) => format!("unknown ({}: {err:#}; xtask {xtask})", version::PYPROJECT),
    }
}

/// The task and `--json` of a read-only task asked for `--dry-run`.
fn read_only_dry_run(command: &Command) -> Option<(&'static str, bool)> {
    match command {
        Command::Version(a) if a.read_only.dry_run => Some(("version", a.json)),
        Command::Verify(a) if a.read_only.dry_run => Some(("verify", a.json)),
        Command::Doctor(a) if a.read_only.dry_run => Some(("doctor", false)),
        Command::WaitFor(a) if a.read_only.dry_run => Some(("wait-for", a.json)),
        Command::Completions { read_only, .. } if read_only.dry_run => Some(("completions", false)),
        _ => None,
    }
}

/// Under `--json`, no progress is said: stderr carries only what a failure needs.
fn quiet_progress(json: bool) {
    if json {
        progress::quiet();
    }
}

/// The repository root: `MEMORIES_ROOT` when set (another checkout or copy of the repository,
/// for example the one a test edits), else the parent of this crate's manifest directory.
fn project_root() -> Utf8PathBuf {
    match std::env::var("MEMORIES_ROOT") {
        Ok(root) if !root.is_empty() => Utf8PathBuf::from(root),
        _ => Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the repository")
            .to_owned(),
    }
}

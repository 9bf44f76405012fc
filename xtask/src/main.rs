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
use crate::run::plan::{Described, Preview, ReadOnly, Task};
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
    let root = root.as_path();
    let (task, preview) = task(root, cli.command)?;
    quiet_progress(preview.json);
    plan::run(task, preview)
}

/// The task a command asks for, and how it reports: every command goes through the one runner
/// ([`plan::run`]), which prints its plan for `--dry-run` or executes it.
fn task(root: &Utf8Path, command: Command) -> Result<(Box<dyn Task + '_>, Preview)> {
    let preview_of = |dry_run: bool, json: bool| Preview { dry_run, json };
    Ok(match command {
        Command::Version(args) => (
            Box::new(ReadOnly { task: "version", run: move |json| version::run(root, json) }),
            preview_of(args.read_only.dry_run, args.json),
        ),
        Command::Build(args) => {
            (Box::new(image::task(root, &(&args).into())?), args.preview.into())
        }
        Command::Release(args) => {
            (Box::new(release::task(root, &(&args).into())?), args.preview.into())
        }
        Command::Verify(args) => {
            let request = (&args).into();
            let run = move |json| verify::run(root, &request, json);
            (
                Box::new(ReadOnly { task: "verify", run }),
                preview_of(args.read_only.dry_run, args.json),
            )
        }
        Command::Images(args) => {
            let (action, preview) = args.action.into_request();
            (bundle::task(root, action)?, preview)
        }
        Command::WaitFor(args) => {
            let preview = preview_of(args.read_only.dry_run, args.json);
            let request = args.into();
            (Box::new(ReadOnly { task: "wait-for", run: move |_| wait::run(&request) }), preview)
        }
        Command::Dev(args) => {
            let preview = args.preview.into();
            (Box::new(dev::dev(root, args.into())?), preview)
        }
        Command::Test(args) => {
            let preview = args.preview.into();
            (Box::new(dev::test(root, args.into())), preview)
        }
        Command::Prod(args) => {
            let preview = args.preview.into();
            (Box::new(prod::task(root, args.action.into(), args.env_file)?), preview)
        }
        Command::Db(args) => (db::task(root, args.action.into())?, args.preview.into()),
        Command::Run(args) => {
            let preview = args.preview.into();
            (Box::new(dev::run(root, args.into())?), preview)
        }
        Command::Reap(args) => (Box::new(reap::task(root)), preview_of(args.dry_run, args.json)),
        Command::Doctor(args) => {
            let preview = preview_of(args.read_only.dry_run, false);
            let request = args.into();
            (Box::new(ReadOnly { task: "doctor", run: move |_| doctor::run(&request) }), preview)
        }
        Command::Ci(args) => {
            let preview = args.preview.into();
            (Box::new(ci::task(root, &args.into())?), preview)
        }
        Command::FaultProxy(args) => {
            let note = format!(
                "would listen on 127.0.0.1 (a free port, printed on stdout) and forward to {}, \
                 failing {:.0}% of requests picked by seed {} (a delay holds a request {:?}); it \
                 changes nothing else, and stops on Ctrl-C",
                args.upstream,
                args.rate * 100.0,
                args.seed,
                args.delay
            );
            let plan = faults::FaultPlan { rate: args.rate, seed: args.seed, delay: args.delay };
            let run = move |_| faults::run(&args.upstream, plan);
            let task = Described { task: "fault-proxy", notes: vec![note], run };
            (Box::new(task), preview_of(args.dry_run, false))
        }
        Command::Completions { shell, read_only: flags } => {
            let run = move |_| cli::print_completions(shell);
            (Box::new(ReadOnly { task: "completions", run }), preview_of(flags.dry_run, false))
        }
        Command::Bench(args) => {
            let preview = preview_of(args.dry_run, args.json);
            let names = match &args.bench {
                Some(bench) => vec![bench.name()],
                None => vec!["wait", "stack", "build", "startup"],
            };
            let notes =
                names.iter().map(|name| format!("runs `bench {name}`: {}", cli::bench_about(name)));
            let run = move |json| run_bench(root, args.bench, json);
            (Box::new(Described { task: "bench", notes: notes.collect(), run }), preview)
        }
    })
}

/// `cargo xtask bench [NAME]`: one benchmark's report, or the quick set's.
fn run_bench(root: &Utf8Path, bench: Option<Bench>, all_json: bool) -> Result<()> {
    let (report, json) = match bench {
        None => return bench::all(root, all_json),
        Some(Bench::Build { runs, json }) => (bench::build(root, runs)?, json),
        Some(Bench::Wait { runs, json }) => (bench::wait(root, runs)?, json),
        Some(Bench::Stack { runs, json }) => (bench::stack(root, runs)?, json),
        Some(Bench::Release { runs, json }) => (bench::release(root, runs)?, json),
        Some(Bench::Cache { runs, platform, json }) => (bench::cache(root, runs, &platform)?, json),
        Some(Bench::Flaky { runs, rate, json }) => (bench::flaky(root, runs, rate)?, json),
        Some(Bench::Startup { runs, json }) => (bench::startup(root, runs)?, json),
        Some(Bench::Devloop { runs, json }) => (bench::devloop(root, runs)?, json),
        Some(Bench::Deploy { runs, monitoring, json }) => {
            let peer =
                if monitoring { bench::DeployPeer::Unmonitored } else { bench::DeployPeer::Naive };
            (bench::deploy(root, runs, peer)?, json)
        }
    };
    report.print(json);
    Ok(())
}

/// What `--version` prints: the app's version (`app/pyproject.toml`) and git revision, which
/// every task builds, tags and releases, and the xtask crate's version. Read only when
/// `--version` (or `-V`) is asked for: it costs a git call, and every other command would pay it.
fn app_version() -> String {
    let asked =
        std::env::args().skip(1).take_while(|a| a != "--").any(|a| a == "--version" || a == "-V");
    if !asked {
        return "(run with --version)".to_owned();
    }
    let xtask = env!("CARGO_PKG_VERSION");
    match version::Revision::read(&project_root()) {
        Ok(revision) => {
            format!("{} (the app, revision {}; xtask {xtask})", revision.version, revision.short())
        }
        Err(err) => format!("unknown ({err:#}; xtask {xtask})"),
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

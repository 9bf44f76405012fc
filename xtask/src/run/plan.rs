//! Plans: commands as values, built without side effects, then echoed and run, or only shown.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8PathBuf;
use serde_json::{Value, json};

use crate::run::interrupt::{self, Interrupted};

mod process;

use process::{Capture, Escalate, Stop, Stopping, Supervised, terminate};
pub use process::{Running, Stream, Streams};

/// One command to run: program, argv, extra environment, working directory and stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Utf8PathBuf,
    /// Text fed to the command's stdin (for instance a bake definition).
    pub stdin: Option<String>,
    /// Binary data fed to the command's stdin instead (for instance a tar stream).
    pub stdin_bytes: Option<Vec<u8>>,
    /// The command's stdout is the task's result (logs, exec, config): it goes to our stdout
    /// instead of stderr.
    pub stdout_is_data: bool,
    /// How long one run may take before the command is stopped (SIGTERM, then SIGKILL).
    pub timeout: Option<Duration>,
    /// Not echoed before it runs: a probe or a query whose answer is all that matters.
    pub quiet: bool,
    /// Values shown as `***` wherever they appear: in the echo, a plan, `--json` and errors.
    pub secrets: Vec<String>,
}

/// What a captured step printed, and how it ended.
#[derive(Debug)]
pub struct Captured {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The step ran past its timeout and was stopped.
    pub timed_out: bool,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// The stdout of `step`, or an error naming it with what it said on stderr.
    pub fn stdout_of(self, step: &Step) -> Result<String> {
        if !self.success() {
            bail!("`{}` failed: {}", step.short(), step.redact(self.stderr.trim()));
        }
        Ok(self.stdout)
    }
}

impl Step {
    pub fn new(program: &str, cwd: impl Into<Utf8PathBuf>) -> Step {
        Step {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: cwd.into(),
            stdin: None,
            stdin_bytes: None,
            stdout_is_data: false,
            timeout: None,
            quiet: false,
            secrets: Vec::new(),
        }
    }

    /// Does not echo the step before it runs.
    pub fn quiet(mut self) -> Step {
        self.quiet = true;
        self
    }

    /// Marks `value` secret: it is shown as `***` wherever the step is shown.
    pub fn secret(mut self, value: &str) -> Step {
        if !value.is_empty() && !self.secrets.iter().any(|s| s == value) {
            self.secrets.push(value.to_owned());
        }
        self
    }

    /// `text` with every secret of the step replaced by `***`, longest first (so that a
    /// secret containing another is hidden whole).
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&String> = self.secrets.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
    }

    /// Stops the command when one run takes longer than `limit`.
    pub fn timeout(mut self, limit: Duration) -> Step {
        self.timeout = Some(limit);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Step {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Step {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sends the command's stdout to ours: it is the task's result.
    pub fn stdout_is_data(mut self) -> Step {
        self.stdout_is_data = true;
        self
    }

    pub fn stdin(mut self, input: String) -> Step {
        self.stdin = Some(input);
        self
    }

    /// Feeds binary data to the command's stdin (a plan shows only its size).
    pub fn stdin_bytes(mut self, input: Vec<u8>) -> Step {
        self.stdin_bytes = Some(input);
        self
    }

    /// The step as data, with its secrets redacted.
    pub fn to_json(&self) -> Value {
        let env: serde_json::Map<String, Value> =
            self.env.iter().map(|(k, v)| (k.clone(), Value::from(self.redact(v)))).collect();
        let args: Vec<String> = self.args.iter().map(|a| self.redact(a)).collect();
        json!({
            "program": self.program,
            "args": args,
            "env": env,
            "cwd": self.cwd.as_str(),
            "stdin": match (&self.stdin, &self.stdin_bytes) {
                (Some(text), _) => Some(self.redact(text)),
                (None, Some(bytes)) => Some(format!("({} bytes)", bytes.len())),
                (None, None) => None,
            },
            "timeout_ms": self.timeout.map(|t| t.as_millis() as u64),
        })
    }

    /// Starts the step and returns at once, for a process that runs beside us: one that
    /// streams (events, a `docker load` fed from a file), one we time, one we poll. It is
    /// echoed unless quiet, and stopped when the handle is dropped while it still runs.
    /// Interrupts are the caller's to watch: see [`Running::try_wait`].
    pub fn spawn(&self, streams: Streams) -> Result<Running> {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        self.echo();
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v))).current_dir(&self.cwd);
        command.stdin(streams.stdin.stdio()).stdout(streams.stdout.stdio());
        command.stderr(streams.stderr.stdio());
        let child = command.spawn().with_context(|| format!("cannot start `{}`", self.short()))?;
        Ok(Running { child, name: self.short(), finished: false })
    }

    /// Runs the step with its stdout sent to our stderr: stdout is kept for results. On Ctrl-C
    /// or SIGTERM the child gets SIGTERM (then SIGKILL after 10 s) and the step fails with
    /// [`Interrupted`].
    pub fn run(&self) -> Result<()> {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        let output = self.supervise(Stop::OnInterrupt, Capture::Nothing)?.output;
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        self.check(&output.status)
    }

    /// Like [`Step::run`], but for clean-up steps, which must finish whatever happened: it
    /// runs even after an interrupt, in a process group of its own (a Ctrl-C at the terminal
    /// does not reach it), with no stdin, and with its output relayed afterwards (a closed
    /// stderr cannot kill it). Only a second signal during the clean-up stops it, with
    /// [`interrupt::Abandoned`]; see [`interrupt::cleanup_abandoned`].
    pub fn run_regardless(&self) -> Result<()> {
        let output = self.capture_regardless()?;
        if self.quiet && output.success() {
            // A quiet clean-up shows its output only when it fails.
            return Ok(());
        }
        for line in output.stdout.lines() {
            if self.stdout_is_data {
                out!("{line}");
            } else {
                say!("{line}");
            }
        }
        for line in output.stderr.lines() {
            say!("{line}");
        }
        self.check(&output.status)
    }

    /// Like [`Step::capture`], for the queries of a clean-up (what is left to remove):
    /// shielded as [`Step::run_regardless`] is.
    pub fn capture_regardless(&self) -> Result<Captured> {
        interrupt::begin_cleanup();
        Ok(self.supervise(Stop::Shielded, Capture::Both)?.into())
    }

    /// Runs the step and returns its stdout (its stderr passes through).
    pub fn read(&self) -> Result<String> {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        let output = self.supervise(Stop::OnInterrupt, Capture::Stdout)?.output;
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        self.check(&output.status)?;
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed non-UTF-8", self.short()))
    }

    /// Runs the step and captures both its stdout and its stderr, for callers that decide by
    /// what the command said (a registry's answer). Fails only when it cannot run at all or is
    /// interrupted; a failed or timed-out command is in the result.
    pub fn capture(&self) -> Result<Captured> {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        let supervised = self.supervise(Stop::OnInterrupt, Capture::Both)?;
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        Ok(supervised.into())
    }

    /// Like [`Step::run`], with the step's stdout and stderr written to `log` (replaced) in
    /// the order they came, for a step that runs beside others whose output must not mix
    /// with its own. The caller shows the log.
    pub fn run_logged(&self, log: &camino::Utf8Path) -> Result<()> {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {log}"))?;
        let output = self.supervise(Stop::OnInterrupt, Capture::File(file))?.output;
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        self.check(&output.status)
    }

    fn echo(&self) {
        if !self.quiet {
            say!("$ {self}");
        }
    }

    fn supervise(&self, stop: Stop, capture: Capture) -> Result<Supervised> {
        self.echo();
        let mut expression = duct::cmd(&self.program, &self.args).dir(&self.cwd).unchecked();
        if self.stdin.is_none()
            && self.stdin_bytes.is_none()
            && !matches!(capture, Capture::Nothing)
        {
            // A query never reads the terminal.
            expression = expression.stdin_null();
        }
        if let Stop::Shielded = stop {
            expression = expression.stdin_null().before_spawn(|command| {
                use std::os::unix::process::CommandExt;
                command.process_group(0);
                Ok(())
            });
        }
        expression = match capture {
            Capture::Both => expression.stdout_capture().stderr_capture(),
            Capture::Stdout => expression.stdout_capture(),
            Capture::Nothing if self.stdout_is_data => expression,
            Capture::Nothing => expression.stdout_to_stderr(),
            Capture::File(file) => expression.stdout_file(file).stderr_to_stdout(),
        };
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        if let Some(input) = &self.stdin {
            expression = expression.stdin_bytes(input.as_bytes());
        }
        if let Some(input) = &self.stdin_bytes {
            expression = expression.stdin_bytes(input.clone());
        }
        let handle =
            expression.start().with_context(|| format!("cannot start `{}`", self.short()))?;
        let started = Instant::now();
        let mut stopping = Stopping::default();
        let mut timed_out = false;
        loop {
            if let Some(output) =
                handle.try_wait().with_context(|| format!("cannot wait for `{}`", self.program))?
            {
                return Ok(Supervised { output: output.clone(), timed_out });
            }
            if self.timeout.is_some_and(|limit| started.elapsed() > limit) {
                timed_out = true;
            }
            if matches!(stop, Stop::Shielded) && interrupt::cleanup_abandoned() {
                let _ = handle.kill();
                return Err(interrupt::Abandoned.into());
            }
            let stop_now = matches!(stop, Stop::OnInterrupt) && interrupt::is_set();
            if stop_now || timed_out {
                match stopping.next() {
                    Some(Escalate::Terminate) => handle.pids().into_iter().for_each(terminate),
                    Some(Escalate::Kill) => drop(handle.kill()),
                    None => {}
                }
            }
            // Short commands (probes, inspects) are seen within a millisecond or two; long
            // ones are polled every 10 ms.
            let pause = Duration::from_millis(1) + started.elapsed() / 20;
            std::thread::sleep(pause.min(Duration::from_millis(10)));
        }
    }

    fn check(&self, status: &std::process::ExitStatus) -> Result<()> {
        if !status.success() {
            let status = status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
            bail!("`{}` failed with exit status {status}", self.short());
        }
        Ok(())
    }

    /// The program and the words that name what it does, for error messages.
    pub fn short(&self) -> String {
        let words: Vec<&str> = self
            .args
            .iter()
            .map(String::as_str)
            .take_while(|a| !a.starts_with('-'))
            .take(2)
            .collect();
        self.redact(
            &std::iter::once(self.program.as_str()).chain(words).collect::<Vec<_>>().join(" "),
        )
    }
}

/// This xtask binary itself, for tasks that run another task as a step (benchmarks, `ci`):
/// no cargo in between, so nothing is rebuilt or timed that should not be.
pub fn this_xtask() -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    exe.into_os_string()
        .into_string()
        .map_err(|_| anyhow::anyhow!("the xtask binary's path is not UTF-8"))
}

/// Shows the step as a command line a person could paste: env, program and quoted argv.
/// This is for display only; steps never go through a shell.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each word is redacted before it is quoted, so quoting cannot hide a secret from
        // the redaction.
        let shown = |word: &str| quote(&self.redact(word));
        for (key, value) in &self.env {
            write!(f, "{key}={} ", shown(value))?;
        }
        f.write_str(&shown(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shown(arg))?;
        }
        if self.stdin.is_some() || self.stdin_bytes.is_some() {
            f.write_str(" <stdin")?;
        }
        Ok(())
    }
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// How a task reports: with `dry_run`, its plan and nothing run; with `json`, the plan or
/// the result as JSON on stdout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preview {
    pub dry_run: bool,
    pub json: bool,
}

/// A task as the one runner ([`run`]) sees it: what it would do, as a [`Plan`] built
/// without running anything, and the doing of it. A task's constructor reads and checks what
/// it was given (a bad request fails there, with or without `--dry-run`); the runner then
/// prints the plan or executes the task.
pub trait Task {
    /// What `--dry-run` prints.
    fn plan(&self) -> Result<Plan>;
    /// Runs the task; with `json`, its result goes to stdout as JSON.
    fn execute(self: Box<Self>, json: bool) -> Result<()>;
}

/// The one runner of every command: with `--dry-run`, the task's plan printed (as text, or
/// as JSON with `--json`) and nothing run; otherwise the task executed.
pub fn run(task: Box<dyn Task + '_>, preview: Preview) -> Result<()> {
    if preview.dry_run {
        task.plan()?.print(preview.json);
        return Ok(());
    }
    task.execute(preview.json)
}

/// A task that only reads (it changes nothing): its plan says so.
pub struct ReadOnly<F> {
    pub task: &'static str,
    pub run: F,
}

impl<F: FnOnce(bool) -> Result<()>> Task for ReadOnly<F> {
    fn plan(&self) -> Result<Plan> {
        let note = "this task only reads (it changes nothing), so there is nothing to plan: run \
                    it without --dry-run";
        Ok(Plan::new(self.task).note(note))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        (self.run)(json)
    }
}

/// A task whose plan is only notes on what it does (an experiment, a server run until
/// Ctrl-C): `notes` for `--dry-run`, `run` to do it.
pub struct Described<F> {
    pub task: &'static str,
    pub notes: Vec<String>,
    pub run: F,
}

impl<F: FnOnce(bool) -> Result<()>> Task for Described<F> {
    fn plan(&self) -> Result<Plan> {
        Ok(self.notes.iter().fold(Plan::new(self.task), |plan, note| plan.note(note.clone())))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        (self.run)(json)
    }
}

/// What a task would do, for `--dry-run`: its steps in order, with what it waits for between
/// them and notes on what it decides only when it runs, and the facts it settled while
/// planning (images, versions, definitions). Built without changing anything: a plan reads
/// the engine only where what the task would do depends on it (`reap`, `db migrate`'s SQL),
/// and says so when it cannot. Every command's `--dry-run` prints one, through [`run`].
#[derive(Debug, Default)]
pub struct Plan {
    pub task: String,
    pub items: Vec<PlanItem>,
    /// Shown beside the plan in `--json` only, each under its own key.
    facts: serde_json::Map<String, Value>,
    /// Text shown as it is after the plan (and in `--json` as a fact), e.g. the SQL a
    /// migration would run.
    attachment: Option<String>,
}

/// A registry API call a task makes itself (no command runs it), as a plan shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// One line, e.g. `read 127.0.0.1:5000/acme/server:1.4.2`.
    pub summary: String,
    /// The same for `--json`, e.g. `{"action": "read", "ref": ...}`.
    pub detail: Value,
}

impl Request {
    pub fn new(summary: String, detail: Value) -> Request {
        Request { summary, detail }
    }
}

#[derive(Debug)]
pub enum PlanItem {
    Run(Step),
    /// A request to a registry's API.
    Request(Request),
    /// What must be ready before the task goes on, e.g. `server http://127.0.0.1:8283/...`.
    WaitFor(String),
    Note(String),
}

impl Plan {
    pub fn new(task: impl Into<String>) -> Plan {
        Plan { task: task.into(), ..Plan::default() }
    }

    pub fn step(mut self, step: Step) -> Plan {
        self.items.push(PlanItem::Run(step));
        self
    }

    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> Plan {
        self.items.extend(steps.into_iter().map(PlanItem::Run));
        self
    }

    /// A fact for `--json`, e.g. `images`; the keys `task`, `dry_run` and `plan` are the
    /// plan's own.
    pub fn requests(mut self, requests: impl IntoIterator<Item = Request>) -> Plan {
        self.items.extend(requests.into_iter().map(PlanItem::Request));
        self
    }

    pub fn fact(mut self, key: &str, value: Value) -> Plan {
        debug_assert!(!["task", "dry_run", "plan"].contains(&key), "{key} is the plan's own");
        self.facts.insert(key.to_owned(), value);
        self
    }

    /// Text shown as it is after the plan, and under `key` in `--json`.
    pub fn attach(mut self, key: &str, text: String) -> Plan {
        self.facts.insert(key.to_owned(), text.clone().into());
        self.attachment = Some(text);
        self
    }

    pub fn wait_for(mut self, waits: impl IntoIterator<Item = String>) -> Plan {
        self.items.extend(waits.into_iter().map(PlanItem::WaitFor));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Plan {
        self.items.push(PlanItem::Note(note.into()));
        self
    }

    /// Prints the plan on stdout: as command lines (waits and notes as `#` lines), or as one
    /// JSON document. Secrets are redacted either way.
    pub fn print(&self, json: bool) {
        if json {
            let items: Vec<Value> = self
                .items
                .iter()
                .map(|item| match item {
                    PlanItem::Run(step) => json!({ "run": step.to_json() }),
                    PlanItem::Request(request) => json!({ "registry": request.detail }),
                    PlanItem::WaitFor(what) => json!({ "wait_for": what }),
                    PlanItem::Note(note) => json!({ "note": note }),
                })
                .collect();
            let mut document = self.facts.clone();
            document.insert("task".into(), self.task.clone().into());
            document.insert("dry_run".into(), true.into());
            document.insert("plan".into(), items.into());
            out!("{:#}", Value::Object(document));
            return;
        }
        out!("# {} (dry run: nothing was run)", self.task);
        for item in &self.items {
            match item {
                PlanItem::Run(step) => print_plan(std::slice::from_ref(step)),
                PlanItem::Request(request) => out!("# registry: {}", request.summary),
                PlanItem::WaitFor(what) => out!("# wait until ready: {what}"),
                PlanItem::Note(note) => out!("# {note}"),
            }
        }
        if let Some(text) = &self.attachment {
            out!("{text}");
        }
    }
}

/// Prints steps on stdout: each as a command line, with its stdin below it.
fn print_plan(steps: &[Step]) {
    for step in steps {
        out!("{step}");
        if let Some(input) = &step.stdin {
            out!("# stdin of the step above:");
            out!("{}", step.redact(input));
        }
    }
}

#[cfg(test)]
mod tests;

//! Plans: commands as values, built without side effects, then echoed and run, or only shown.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8PathBuf;
use serde_json::{Value, json};

use crate::interrupt::{self, Interrupted};

/// One command to run: program, argv, extra environment, working directory and stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Utf8PathBuf,
    /// Bytes fed to the command's stdin (for instance a bake definition).
    pub stdin: Option<String>,
    /// The command's stdout is the task's result (logs, exec, config): it goes to our stdout
    /// instead of stderr.
    pub stdout_is_data: bool,
    /// How long one run may take before the command is stopped (SIGTERM, then SIGKILL).
    pub timeout: Option<Duration>,
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
}

impl Step {
    pub fn new(program: &str, cwd: impl Into<Utf8PathBuf>) -> Step {
        Step {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: cwd.into(),
            stdin: None,
            stdout_is_data: false,
            timeout: None,
        }
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

    pub fn to_json(&self) -> Value {
        let env: serde_json::Map<String, Value> =
            self.env.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        json!({
            "program": self.program,
            "args": self.args,
            "env": env,
            "cwd": self.cwd.as_str(),
            "stdin": self.stdin,
            "timeout_ms": self.timeout.map(|t| t.as_millis() as u64),
        })
    }

    /// The step as a `std::process::Command` with its argv, env and cwd, for callers that need
    /// the raw process (timing it, reading its output); stdin bytes are theirs to feed.
    pub fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v))).current_dir(&self.cwd);
        command
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
        interrupt::begin_cleanup();
        let supervised = self.supervise(Stop::Shielded, Capture::Both)?;
        let output = supervised.output;
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            if self.stdout_is_data {
                out!("{line}");
            } else {
                say!("{line}");
            }
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            say!("{line}");
        }
        self.check(&output.status)
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
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Ok(Captured {
            status: supervised.output.status,
            stdout: text(&supervised.output.stdout),
            stderr: text(&supervised.output.stderr),
            timed_out: supervised.timed_out,
        })
    }

    fn supervise(&self, stop: Stop, capture: Capture) -> Result<Supervised> {
        say!("$ {self}");
        let mut expression = duct::cmd(&self.program, &self.args).dir(&self.cwd).unchecked();
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
        };
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        if let Some(input) = &self.stdin {
            expression = expression.stdin_bytes(input.as_bytes());
        }
        let handle =
            expression.start().with_context(|| format!("cannot start `{}`", self.program))?;
        let started = Instant::now();
        let mut signalled: Option<Instant> = None;
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
                match signalled {
                    None => {
                        for pid in handle.pids() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                        signalled = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > Duration::from_secs(10) => {
                        let _ = handle.kill();
                    }
                    Some(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(10));
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
    fn short(&self) -> String {
        let words: Vec<&str> = self
            .args
            .iter()
            .map(String::as_str)
            .take_while(|a| !a.starts_with('-'))
            .take(2)
            .collect();
        std::iter::once(self.program.as_str()).chain(words).collect::<Vec<_>>().join(" ")
    }
}

/// When [`Step::supervise`] stops the command early (besides its timeout).
enum Stop {
    /// On the first interrupt.
    OnInterrupt,
    /// A clean-up step: only when the clean-up is abandoned.
    Shielded,
}

/// What [`Step::supervise`] keeps of the command's output.
#[derive(Debug, Clone, Copy)]
enum Capture {
    /// Stdout goes to our stderr (or stdout for data), stderr passes through.
    Nothing,
    Stdout,
    Both,
}

struct Supervised {
    output: std::process::Output,
    timed_out: bool,
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
        for (key, value) in &self.env {
            write!(f, "{key}={} ", quote(value))?;
        }
        f.write_str(&quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        if self.stdin.is_some() {
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

/// Prints a plan on stdout: each step as a command line, with its stdin below it.
pub fn print_plan(steps: &[Step]) {
    for step in steps {
        out!("{step}");
        if let Some(input) = &step.stdin {
            out!("# stdin of the step above:");
            out!("{input}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_display_as_pasteable_command_lines() {
        let step = Step::new("docker", "/repo")
            .args(["buildx", "bake", "--set", "*.labels.x=a b", "it's"])
            .stdin("{}".into());
        assert_eq!(step.to_string(), "docker buildx bake --set '*.labels.x=a b' 'it'\\''s' <stdin");
        assert_eq!(step.short(), "docker buildx bake");
    }

    #[test]
    fn failing_step_names_the_command_and_status() {
        let step = Step::new("false", ".").arg("--flag");
        let err = step.run().unwrap_err().to_string();
        assert_eq!(err, "`false` failed with exit status 1");
        let missing = Step::new("definitely-not-a-program-xtask", ".").run().unwrap_err();
        assert!(missing.to_string().contains("cannot start"), "{missing}");
    }

    #[test]
    fn captured_steps_keep_both_streams_and_stop_at_their_timeout() {
        let said = Step::new("sh", ".").args(["-c", "echo out; echo err >&2; exit 3"]);
        let captured = said.capture().unwrap();
        assert_eq!((captured.stdout.as_str(), captured.stderr.as_str()), ("out\n", "err\n"));
        assert_eq!(captured.status.code(), Some(3));
        assert!(!captured.success() && !captured.timed_out);

        let slow = Step::new("sleep", ".").arg("5").timeout(Duration::from_millis(100));
        let started = Instant::now();
        let captured = slow.capture().unwrap();
        assert!(captured.timed_out && !captured.success());
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    }
}

//! Plans: commands as values, built without side effects, then echoed and run, or only shown.

use std::fmt;

use anyhow::{Context, Result, bail};
use camino::Utf8PathBuf;
use serde_json::{Value, json};

/// One command to run: program, argv, extra environment, working directory and stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Utf8PathBuf,
    /// Bytes fed to the command's stdin (for instance a bake definition).
    pub stdin: Option<String>,
}

impl Step {
    pub fn new(program: &str, cwd: impl Into<Utf8PathBuf>) -> Step {
        Step {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: cwd.into(),
            stdin: None,
        }
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
        })
    }

    /// Runs the step with its stdout sent to our stderr: stdout is kept for results.
    pub fn run(&self) -> Result<()> {
        eprintln!("$ {self}");
        let mut expression =
            duct::cmd(&self.program, &self.args).dir(&self.cwd).stdout_to_stderr().unchecked();
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        if let Some(input) = &self.stdin {
            expression = expression.stdin_bytes(input.as_bytes());
        }
        let output =
            expression.run().with_context(|| format!("cannot start `{}`", self.program))?;
        if !output.status.success() {
            let status =
                output.status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
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
        println!("{step}");
        if let Some(input) = &step.stdin {
            println!("# stdin of the step above:");
            println!("{input}");
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
}

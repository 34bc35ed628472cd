//! Where each setting came from, so that an error names it as the operator wrote it: a key
//! of the settings file, an environment variable or a flag.
//!
//! Validation itself ([`Settings::validate`]) knows only the setting's key; the binary, which
//! sees the file and clap's matches, records the origins and has [`Provenance::explain`]
//! rewrite the error.

use crate::settings::{Settings, SettingsError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key of this settings file.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This flag (`--name`).
    Flag(String),
}

/// The origin of every setting that was given, by key (the file's spelling).
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    origins: HashMap<String, Origin>,
}

impl Provenance {
    /// No setting given anywhere: every value is a default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every key `file` sets as coming from the file at `path`.
    pub fn file(mut self, path: &Path, file: &Settings) -> Self {
        // Serialising skips unset options, so the table's keys are exactly the keys given.
        if let Ok(table) = toml::Table::try_from(file) {
            for key in table.keys() {
                self.origins
                    .insert(key.clone(), Origin::File(path.to_owned()));
            }
        }
        self
    }

    /// Records `key` as given by `origin`; a later record wins, as later layers do.
    pub fn set(&mut self, key: &str, origin: Origin) {
        self.origins.insert(key.to_owned(), origin);
    }

    /// Records, from clap's matches of a command that flattens [`Settings`], every setting
    /// given on the command line or in the environment.
    pub fn clap(mut self, cmd: &clap::Command, matches: &clap::ArgMatches) -> Self {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let origin = match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => match arg.get_long() {
                    Some(long) => Origin::Flag(format!("--{long}")),
                    None => continue,
                },
                Some(clap::parser::ValueSource::EnvVariable) => match arg.get_env() {
                    Some(var) => Origin::Env(var.to_string_lossy().into_owned()),
                    None => continue,
                },
                _ => continue,
            };
            self.set(id, origin);
        }
        self
    }

    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// `err` with an invalid value named as the operator wrote it (`--max-batch 0`,
    /// `SEALPOST_MAX_BATCH=0`, or `max_batch = 0` in the file); other errors unchanged.
    pub fn explain(&self, err: SettingsError) -> SettingsError {
        let SettingsError::Invalid {
            key,
            value,
            allowed,
        } = err
        else {
            return err;
        };
        let written = match self.origin(key) {
            Origin::Default => format!("setting `{key}` = {value} (the default)"),
            Origin::File(path) => format!("`{key} = {value}` in {}", path.display()),
            Origin::Env(var) => format!("{var}={value} (environment)"),
            Origin::Flag(flag) => format!("{flag} {value}"),
        };
        SettingsError::InvalidAsWritten { written, allowed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn command() -> clap::Command {
        Settings::augment_args(clap::Command::new("serve").no_binary_name(true))
    }

    fn explain(p: &Provenance, s: &Settings) -> String {
        let err = s.validate().expect_err("the settings are invalid");
        p.explain(err).to_string()
    }

    #[test]
    fn flags_are_named_as_flags() {
        let cmd = command();
        let m = cmd
            .clone()
            .try_get_matches_from(["--max-batch", "0"])
            .expect("parses");
        let given = Settings::from_arg_matches(&m).expect("settings");
        let p = Provenance::new().clap(&cmd, &m);
        assert_eq!(p.origin("max_batch"), Origin::Flag("--max-batch".into()));
        let e = explain(&p, &given);
        assert!(e.starts_with("--max-batch 0: "), "{e}");
    }

    #[test]
    fn file_keys_are_named_with_the_file() {
        let file = Settings::from_toml("max_window = 0\n").expect("parses");
        let p = Provenance::new().file(Path::new("/etc/sealpost.toml"), &file);
        assert_eq!(p.origin("listen"), Origin::Default);
        let e = explain(&p, &file);
        assert!(
            e.starts_with("`max_window = 0` in /etc/sealpost.toml: "),
            "{e}"
        );
    }

    #[test]
    fn environment_variables_are_named_and_later_layers_win() {
        let file = Settings::from_toml("max_window = 0\n").expect("parses");
        let mut p = Provenance::new().file(Path::new("a.toml"), &file);
        // What `clap` records for a value read from the environment (a test cannot set the
        // process environment safely while other tests run).
        p.set("max_window", Origin::Env("SEALPOST_MAX_WINDOW".into()));
        let e = explain(&p, &file);
        assert!(
            e.starts_with("SEALPOST_MAX_WINDOW=0 (environment): "),
            "{e}"
        );
    }

    #[test]
    fn every_setting_has_a_flag_and_an_environment_variable() {
        // `explain` names a setting by the flag and variable clap knows; a setting without
        // them could only be named by its key.
        for arg in command().get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(
                arg.get_long(),
                Some(id.replace('_', "-").as_str()),
                "flag of {id}"
            );
            let env = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            assert_eq!(
                env,
                Some(format!("SEALPOST_{}", id.to_uppercase())),
                "variable of {id}"
            );
        }
    }
}

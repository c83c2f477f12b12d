//! From `-c` files to a [`StackPlan`]: each file is parsed, interpolated and checked against the schema on its
//! own (so an error names its file and line), then the files are merged and converted. Nothing here talks to the
//! daemon.

use super::convert::{self, Context, StackPlan};
use super::interpolate::{self, Vars};
use super::merge;
use super::schema::{self, ComposeFile};
use super::yaml::{self, ComposeError, Document};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The merged, interpolated compose files.
#[derive(Debug)]
pub struct Loaded {
    pub docs: Vec<Document>,
    pub merged: Value,
    pub file: ComposeFile,
    /// Where relative paths (env_file, secret files, bind sources) start: the first file's directory.
    pub dir: PathBuf,
    pub vars: Vars,
    /// Variables used without a value and without a default.
    pub unset: BTreeSet<String>,
}

/// Reads the files (`-` is standard input), with variables from the environment and the first file's `.env`.
pub fn load_files(paths: &[PathBuf], interpolate: bool) -> Result<Loaded, ComposeError> {
    let first =
        paths.first().ok_or_else(|| ComposeError("please specify a compose file (with --compose-file)".into()))?;
    let dir = if first.as_os_str() == "-" {
        std::env::current_dir().map_err(|e| ComposeError(format!("cannot read the current directory: {e}")))?
    } else {
        first
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let vars = Vars::from_environment(&dir)?;
    let mut docs = Vec::new();
    for p in paths {
        docs.push(if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| ComposeError(format!("cannot read standard input: {e}")))?;
            yaml::parse("stdin", &text)?
        } else {
            yaml::read(p)?
        });
    }
    load_docs(docs, dir, vars, interpolate)
}

/// Interpolates, checks and merges parsed documents.
pub fn load_docs(mut docs: Vec<Document>, dir: PathBuf, vars: Vars, interpolate: bool) -> Result<Loaded, ComposeError> {
    let mut unset = BTreeSet::new();
    for d in &mut docs {
        if interpolate {
            unset.extend(interpolate::interpolate(d, &vars)?);
        }
        schema::decode(&d.value).map_err(|(path, msg)| d.error_at(&path, msg))?;
    }
    let merged = merge::merge(docs.iter().map(|d| d.value.clone()).collect());
    let file = schema::decode(&merged).map_err(|(path, msg)| error_in(&docs, &path, msg))?;
    Ok(Loaded { docs, merged, file, dir, vars, unset })
}

/// An error about a path of the merged file, placed in the last file that writes that path.
fn error_in(docs: &[Document], path: &str, msg: impl std::fmt::Display) -> ComposeError {
    let exact = |d: &&Document| {
        let mut v = &d.value;
        for part in path.split('.') {
            let key = part.split('[').next().unwrap_or(part);
            match v.get(key) {
                Some(next) => v = next,
                None => return false,
            }
        }
        true
    };
    match docs.iter().rev().find(exact).or(docs.last()) {
        Some(d) => d.error_at(path, msg),
        None => ComposeError(format!("{path}: {msg}")),
    }
}

impl Loaded {
    /// Converts for deployment as stack `name`.
    pub fn plan(&self, name: &str) -> Result<StackPlan, ComposeError> {
        let cx = Context { stack: name, dir: &self.dir, vars: &self.vars };
        convert::convert(&self.file, &cx).map_err(|e| {
            if e.path.is_empty() {
                ComposeError(e.msg)
            } else {
                error_in(&self.docs, &e.path, e.msg)
            }
        })
    }

    /// One warning line per variable used without a value, as `docker compose` prints them.
    pub fn warnings(&self) -> Vec<String> {
        self.unset.iter().map(|v| format!("The \"{v}\" variable is not set. Defaulting to a blank string.")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Loaded, ComposeError> {
        let docs = files.iter().map(|(name, text)| yaml::parse(name, text).unwrap()).collect();
        let vars = Vars::new(env.iter().map(|(k, v)| (k.to_string(), v.to_string())), Default::default());
        load_docs(docs, PathBuf::from("/nonexistent"), vars, true)
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = load(
            &[
                ("a.yml", "services:\n  web:\n    image: busybox\n"),
                ("b.yml", "services:\n  web:\n    deploy:\n      replicaz: 2\n"),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.0, "b.yml:4:7: services.web.deploy.replicaz: unknown key \"replicaz\"");
    }

    #[test]
    fn conversion_errors_point_into_the_file() {
        let l = load(&[("a.yml", "services:\n  web:\n    image: busybox\n    deploy:\n      mode: sideways\n")], &[])
            .unwrap();
        let e = l.plan("app").unwrap_err();
        assert!(e.0.starts_with("a.yml:5:7: services.web.deploy.mode: invalid mode \"sideways\""), "{e}");
    }

    #[test]
    fn interpolation_error_names_the_variable_and_unset_ones_warn() {
        let e = load(&[("a.yml", "services:\n  web:\n    image: \"busybox:${TAG:?set TAG}\"\n")], &[]).unwrap_err();
        assert_eq!(e.0, "a.yml:3:5: services.web.image: required variable TAG is missing a value: set TAG");
        let l = load(&[("a.yml", "services:\n  web:\n    image: \"busybox${SUFFIX}\"\n")], &[]).unwrap();
        assert_eq!(l.warnings(), ["The \"SUFFIX\" variable is not set. Defaulting to a blank string."]);
        let l = load(&[("a.yml", "services:\n  web:\n    image: \"busybox:${TAG}\"\n")], &[("TAG", "1.36")]).unwrap();
        assert_eq!(l.file.services["web"].image.as_deref(), Some("busybox:1.36"));
    }
}

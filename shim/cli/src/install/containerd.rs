//! containerd's config for the installer. Version 2 (containerd 1.6/1.7) is edited in place:
//! 1.x merges `imports` per plugin, so a drop-in would replace the whole CRI section. Version 3
//! (2.x) merges imports deeply, so the runtime goes into a drop-in under `conf.d` and the main
//! file only gains an `imports` entry. A missing main file is created as version 2, which every
//! supported containerd reads.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Value};

use crate::configure::{add_runtime, add_runtime_as, config_version, cri_plugin, remove_runtime};
use crate::CliError;

/// The runtime entry install adds.
pub struct Runtime {
    /// The shim config (host path) the runtime's ConfigPath names.
    pub shim_config: String,
    /// The installed shim binary (host path), as `runtime_path`.
    pub runtime_path: String,
    /// Make it the default runtime.
    pub set_default: bool,
}

/// What to write.
#[derive(Debug, PartialEq)]
pub struct Edit {
    /// The config version found (or created).
    pub version: i64,
    /// The main file's new text.
    pub main: String,
    /// A drop-in (host path, text), for version 3.
    pub drop_in: Option<(PathBuf, String)>,
    /// The `imports` entry added to the main file.
    pub import_added: Option<String>,
}

const DROP_IN_NAME: &str = "99-nvidia-shim.toml";
const DROP_IN_HEADER: &str =
    "# Written by `nvidia-shim install`; `nvidia-shim uninstall` removes it.\n";

fn parse(text: &str, what: &Path) -> Result<DocumentMut, CliError> {
    text.parse::<DocumentMut>().map_err(|e| {
        CliError::failed(format!(
            "{} is not valid TOML, so it was left as it is: {e}",
            what.display()
        ))
    })
}

/// The directory of an existing `imports` glob like `/etc/containerd/conf.d/*.toml`.
fn imported_dir(doc: &DocumentMut) -> Option<PathBuf> {
    doc.get("imports")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|s| s.strip_suffix("/*.toml").map(PathBuf::from))
}

/// Plans the edit of main config `main` (host path) whose text is `current`.
pub fn plan(
    main: &Path,
    current: Option<&str>,
    rt: &Runtime,
    drop_in_dir: Option<&Path>,
) -> Result<Edit, CliError> {
    let mut doc = parse(current.unwrap_or("version = 2\n"), main)?;
    let version = config_version(&doc);
    cri_plugin(version)
        .map_err(|e| CliError::failed(format!("{}: {}", main.display(), e.message)))?;
    if version == 2 {
        // containerd 1.6 parses runtime_path but never uses it; an absolute runtime_type names
        // the binary on 1.6 and 1.7 alike.
        add_runtime_as(
            &mut doc,
            &rt.runtime_path,
            &rt.shim_config,
            Some(&rt.runtime_path),
            rt.set_default,
        )?;
        return Ok(Edit {
            version,
            main: doc.to_string(),
            drop_in: None,
            import_added: None,
        });
    }
    let base = main.parent().unwrap_or(Path::new("/"));
    let dir = drop_in_dir
        .map(Path::to_path_buf)
        .or_else(|| imported_dir(&doc))
        .unwrap_or_else(|| base.join("conf.d"));
    let glob = format!("{}/*.toml", dir.display());
    let mut import_added = None;
    let listed = doc
        .get("imports")
        .and_then(|v| v.as_array())
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(glob.as_str())));
    if !listed {
        match doc.get_mut("imports").and_then(|v| v.as_array_mut()) {
            Some(a) => a.push(glob.as_str()),
            None => {
                let mut a = Array::new();
                a.push(glob.as_str());
                doc["imports"] = toml_edit::value(a);
            }
        }
        import_added = Some(glob);
    }
    let mut drop = parse("version = 3\n", Path::new(DROP_IN_NAME))?;
    add_runtime(
        &mut drop,
        &rt.shim_config,
        Some(&rt.runtime_path),
        rt.set_default,
    )?;
    Ok(Edit {
        version,
        main: doc.to_string(),
        drop_in: Some((dir.join(DROP_IN_NAME), format!("{DROP_IN_HEADER}{drop}"))),
        import_added,
    })
}

/// Takes install's entries out of a main config someone else changed since: the runtime, a
/// default pointing at it, and the `imports` entry install added. None when none is there.
pub fn strip(
    main: &Path,
    current: &str,
    import_added: Option<&str>,
) -> Result<Option<String>, CliError> {
    let mut doc = parse(current, main)?;
    let mut changed = cri_plugin(config_version(&doc)).is_ok() && remove_runtime(&mut doc)?;
    if let Some(glob) = import_added {
        if let Some(a) = doc.get_mut("imports").and_then(|v| v.as_array_mut()) {
            let before = a.len();
            a.retain(|v: &Value| v.as_str() != Some(glob));
            changed |= a.len() != before;
            if a.is_empty() {
                doc.remove("imports");
            }
        }
    }
    Ok(changed.then(|| doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Runtime {
        Runtime {
            shim_config: "/etc/nvidia-shim/config.toml".into(),
            runtime_path: "/usr/local/nvidia-shim/bin/containerd-shim-nvidia-v2".into(),
            set_default: false,
        }
    }

    #[test]
    fn version_2_is_edited_in_place() {
        let main = Path::new("/etc/containerd/config.toml");
        let e = plan(main, Some("version = 2\n# keep me\n"), &rt(), None).unwrap();
        assert_eq!(e.version, 2);
        assert!(e.drop_in.is_none() && e.import_added.is_none());
        assert!(e.main.contains("# keep me"), "{}", e.main);
        assert!(e
            .main
            .contains("runtime_path = \"/usr/local/nvidia-shim/bin/containerd-shim-nvidia-v2\""));
        assert!(!e.main.contains("default_runtime_name"), "{}", e.main);
        let again = plan(main, Some(&e.main), &rt(), None).unwrap();
        assert_eq!(again.main, e.main, "a second plan changes nothing");
        let missing = plan(main, None, &rt(), None).unwrap();
        assert!(missing.main.starts_with("version = 2"), "{}", missing.main);
    }

    #[test]
    fn version_3_goes_to_a_drop_in_with_imports() {
        let main = Path::new("/etc/containerd/config.toml");
        let e = plan(main, Some("version = 3\n"), &rt(), None).unwrap();
        let (path, text) = e.drop_in.clone().unwrap();
        assert_eq!(
            path,
            Path::new("/etc/containerd/conf.d/99-nvidia-shim.toml")
        );
        assert!(
            text.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.nvidia]"),
            "{text}"
        );
        assert!(!e.main.contains("runtimes"), "{}", e.main);
        assert_eq!(
            e.import_added.as_deref(),
            Some("/etc/containerd/conf.d/*.toml")
        );
        let again = plan(main, Some(&e.main), &rt(), None).unwrap();
        assert_eq!(
            (again.main.as_str(), again.import_added),
            (e.main.as_str(), None)
        );
        let stripped = strip(main, &e.main, e.import_added.as_deref())
            .unwrap()
            .unwrap();
        assert_eq!(stripped, "version = 3\n");
        // An existing conf.d import is reused, not duplicated.
        let own = plan(
            main,
            Some("version = 3\nimports = [\"/etc/containerd/d/*.toml\"]\n"),
            &rt(),
            None,
        )
        .unwrap();
        assert_eq!(
            own.drop_in.unwrap().0,
            Path::new("/etc/containerd/d/99-nvidia-shim.toml")
        );
        assert!(own.import_added.is_none());
    }

    #[test]
    fn bad_configs_are_named_and_left_alone() {
        let main = Path::new("/etc/containerd/config.toml");
        let e = plan(main, Some("version = 2\n[plugins\n"), &rt(), None).unwrap_err();
        assert!(
            e.message
                .contains("/etc/containerd/config.toml is not valid TOML"),
            "{}",
            e.message
        );
        let e = plan(main, Some("[plugins.cri]\n"), &rt(), None).unwrap_err();
        assert!(
            e.message.contains("version 1") && e.message.contains("migrate"),
            "{}",
            e.message
        );
    }
}

//! NVIDIA's CDI hooks, recognised and replaced. NVIDIA's CDI specs (the toolkit's `nvidia-ctk
//! cdi generate`, the DRA driver's per-claim specs, the device plugin's CDI modes) carry
//! `createContainer` hooks that run `nvidia-cdi-hook` on the host with input the container
//! controls. containerd copies them into the spec before the shim sees it. Each hook's effect is
//! something the shim already does with its own guarantees (in-root writes that follow no image
//! symlink out of the root, bounded input, no program run): this module reads the hooks into
//! [`NvidiaHook`]s, and [`NvidiaHook::plan`] turns each into plan edits.
//!
//! Only the hooks' arguments are read here (pure, bounded); a hook whose program is not
//! NVIDIA's is not ours to touch.

use oci_spec::runtime::{Hook, Spec};

use crate::config::HookPolicy;
use crate::error::GpuError;
use crate::plan::{Plan, MASKED_PARAMS};

/// The most links one `create-symlinks` hook may ask for (NVIDIA's own specs ask for about 50).
pub const MAX_LINKS: usize = 4096;
/// The most bytes one argument may have (a path: `PATH_MAX`).
pub const MAX_ARG: usize = 4096;
/// The most bytes of arguments all of a spec's NVIDIA hooks may have together.
pub const MAX_ARGS_TOTAL: usize = 1 << 20;

/// One of NVIDIA's hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvidiaHook {
    /// `create-symlinks --link TARGET::LINK …`: `(target, link)` pairs, links absolute.
    CreateSymlinks(Vec<(String, String)>),
    /// `update-ldcache --folder DIR …`: the folders whose libraries the loader must find.
    UpdateLdcache(Vec<String>),
    /// `enable-cuda-compat --host-driver-version V`: use the image's forward-compat libraries when
    /// they are newer than the host's driver.
    EnableCudaCompat,
    /// `disable-device-node-modification`: keep the driver's libraries in the container from
    /// creating or changing device nodes.
    DisableDeviceNodeModification,
    /// `update-application-profile`: an application profile that hides the GPUs the container was
    /// not given from the graphics driver.
    UpdateApplicationProfile,
    /// `chmod --mode M --path P …` (deprecated): permissions of paths in the container.
    Chmod,
    /// A subcommand (or flag) this runtime has no equivalent for; the words it was called with.
    Unknown(String),
}

impl NvidiaHook {
    /// The subcommand's name, for logs.
    pub fn name(&self) -> &str {
        match self {
            NvidiaHook::CreateSymlinks(_) => "create-symlinks",
            NvidiaHook::UpdateLdcache(_) => "update-ldcache",
            NvidiaHook::EnableCudaCompat => "enable-cuda-compat",
            NvidiaHook::DisableDeviceNodeModification => "disable-device-node-modification",
            NvidiaHook::UpdateApplicationProfile => "update-application-profile",
            NvidiaHook::Chmod => "chmod",
            NvidiaHook::Unknown(words) => words,
        }
    }

    /// Adds the hook's effect to the plan, with a line saying how it was replaced.
    ///
    /// - links go where the hook would have made them (in-root, at Create);
    /// - the loader cache already lists every mounted driver library at its destination, which
    ///   is what `ldconfig` over the folders gives; the links made here are files under their
    ///   sonames in those folders;
    /// - forward compat follows the shim's own rule (`[gpu] cuda_forward_compat`), decided from
    ///   the image's compat directory and the driver the shim discovered;
    /// - device-node modification: the driver's params are masked, as for every GPU container;
    /// - the application profile and chmod have nothing left to do: the container holds device
    ///   nodes only for its own GPUs, so the graphics driver cannot see the others, and runc
    ///   creates each node with the mode the spec gives it.
    pub fn plan(&self, p: &mut Plan) {
        let how = match self {
            NvidiaHook::CreateSymlinks(links) => {
                for (target, link) in links {
                    if let Some((dir, name)) = link.rsplit_once('/') {
                        let dir = if dir.is_empty() { "/" } else { dir };
                        p.add_link(dir, name, target);
                    }
                }
                format!("{} links made in the container's root", links.len())
            }
            NvidiaHook::UpdateLdcache(folders) => format!(
                "the loader cache lists the driver libraries mounted in {}",
                folders.join(", ")
            ),
            NvidiaHook::EnableCudaCompat => {
                "forward compatibility decided by the shim's own rule".to_string()
            }
            NvidiaHook::DisableDeviceNodeModification => {
                if !p.masked_paths.iter().any(|m| m == MASKED_PARAMS) {
                    p.masked_paths.push(MASKED_PARAMS.into());
                }
                format!("{MASKED_PARAMS} masked")
            }
            NvidiaHook::UpdateApplicationProfile => {
                "nothing to do: only the container's own GPU nodes exist in it".to_string()
            }
            NvidiaHook::Chmod => "nothing to do: runc creates nodes with the spec's modes".into(),
            NvidiaHook::Unknown(_) => "no equivalent; dropped".to_string(),
        };
        let line = format!("NVIDIA CDI hook {} replaced: {how}", self.name());
        if !p.replaced_hooks.contains(&line) {
            p.replaced_hooks.push(line);
        }
    }
}

/// Whether `spec` carries any of NVIDIA's hooks.
pub fn has_nvidia_hooks(spec: &Spec) -> bool {
    let Some(h) = spec.hooks() else { return false };
    #[allow(deprecated)]
    let lists = [
        h.prestart(),
        h.create_runtime(),
        h.create_container(),
        h.start_container(),
        h.poststart(),
        h.poststop(),
    ];
    lists.into_iter().flatten().flatten().any(|hook| {
        recognise(
            &hook.path().to_string_lossy(),
            hook.args().as_deref().unwrap_or_default(),
        )
        .is_some()
    })
}

/// Takes NVIDIA's hooks out of `spec` under `policy`: `Replace` removes them and returns them
/// read (the caller plans their effect), `Keep` leaves the spec as it is and returns none,
/// `Refuse` fails naming the first. Other hooks stay where they are, untouched.
pub fn take(spec: &mut Spec, policy: HookPolicy) -> Result<Vec<NvidiaHook>, GpuError> {
    if policy == HookPolicy::Keep || !has_nvidia_hooks(spec) {
        return Ok(Vec::new());
    }
    let Some(hooks) = spec.hooks_mut().as_mut() else {
        return Ok(Vec::new());
    };
    // (program, subcommand, its arguments)
    let mut found: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut total = 0usize;
    let mut sift = |list: &mut Option<Vec<Hook>>| {
        if let Some(v) = list.as_mut() {
            v.retain(|hook| {
                let args = hook.args().clone().unwrap_or_default();
                match recognise(&hook.path().to_string_lossy(), &args) {
                    Some((sub, rest)) => {
                        total += args.iter().map(String::len).sum::<usize>();
                        found.push((
                            hook.path().display().to_string(),
                            sub.to_string(),
                            rest.to_vec(),
                        ));
                        false
                    }
                    None => true,
                }
            });
            if v.is_empty() {
                *list = None;
            }
        }
    };
    #[allow(deprecated)]
    {
        sift(hooks.prestart_mut());
    }
    sift(hooks.create_runtime_mut());
    sift(hooks.create_container_mut());
    sift(hooks.start_container_mut());
    sift(hooks.poststart_mut());
    sift(hooks.poststop_mut());
    if *hooks == oci_spec::runtime::Hooks::default() {
        spec.set_hooks(None);
    }
    if policy == HookPolicy::Refuse {
        let (path, sub, _) = &found[0];
        return Err(GpuError::Refused(format!(
            "the spec carries NVIDIA's CDI hook {} ({}) and [gpu] cdi_hooks = \"refuse\"; \
             set it to \"replace\" to have the shim do the hook's work instead",
            crate::echo::quoted(path),
            crate::echo::clipped(sub, 64),
        )));
    }
    if total > MAX_ARGS_TOTAL {
        return Err(GpuError::Refused(format!(
            "NVIDIA's CDI hooks in the spec carry {total} bytes of arguments, over the \
             {MAX_ARGS_TOTAL}-byte limit"
        )));
    }
    found
        .iter()
        .map(|(_, sub, rest)| parse(sub, rest))
        .collect()
}

/// The subcommand and its arguments when `path`/`args` run NVIDIA's hook program: the
/// `nvidia-cdi-hook` binary or `nvidia-ctk hook`, installed anywhere (operators and driver
/// containers put them in their own directories). Global flags before the subcommand are skipped.
pub fn recognise<'a>(path: &str, args: &'a [String]) -> Option<(&'a str, &'a [String])> {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let program = base(path);
    let mut rest = args.get(1..).unwrap_or_default();
    let skip_flags = |mut r: &'a [String]| {
        while r.first().is_some_and(|a| a.starts_with('-')) {
            r = &r[1..];
        }
        r
    };
    match program.as_str() {
        "nvidia-cdi-hook" => {}
        "nvidia-ctk" => {
            rest = skip_flags(rest);
            if rest.first().map(String::as_str) != Some("hook") {
                return None;
            }
            rest = &rest[1..];
        }
        _ => return None,
    }
    let rest = skip_flags(rest);
    let (sub, tail) = rest.split_first()?;
    Some((sub.as_str(), tail))
}

/// Reads one of NVIDIA's hooks from its subcommand and arguments, within the bounds above. An
/// argument that would make the shim write outside what the hook means (a relative or `..` link
/// path, a NUL, an oversized list) is refused, naming it.
pub fn parse(sub: &str, args: &[String]) -> Result<NvidiaHook, GpuError> {
    if let Some(a) = args.iter().find(|a| a.len() > MAX_ARG || a.contains('\0')) {
        return Err(refused(
            sub,
            format!(
                "argument {} is over {MAX_ARG} bytes or holds a NUL",
                crate::echo::quoted(a)
            ),
        ));
    }
    let flags = flag_values(args);
    let unknown = |flags: &[(&str, &str)], known: &[&str]| {
        flags
            .iter()
            .find(|(f, _)| !known.contains(f))
            .map(|(f, _)| NvidiaHook::Unknown(crate::echo::clipped(&format!("{sub} --{f}"), 128)))
    };
    Ok(match sub {
        "create-symlinks" => {
            if let Some(u) = unknown(&flags, &["link"]) {
                return Ok(u);
            }
            let links: Vec<&str> = flags.iter().map(|(_, v)| *v).collect();
            if links.len() > MAX_LINKS {
                return Err(refused(
                    sub,
                    format!(
                        "{} links asked for, over the {MAX_LINKS}-link limit",
                        links.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(links.len());
            for l in links {
                let (target, link) = l.split_once("::").ok_or_else(|| {
                    refused(
                        sub,
                        format!("--link {} is not TARGET::LINK", crate::echo::quoted(l)),
                    )
                })?;
                if target.is_empty() || !clean_absolute(link) {
                    return Err(refused(
                        sub,
                        format!(
                            "--link {}: the link must be an absolute path without `..` and the target non-empty",
                            crate::echo::quoted(l)
                        ),
                    ));
                }
                out.push((target.to_string(), link.to_string()));
            }
            NvidiaHook::CreateSymlinks(out)
        }
        "update-ldcache" => {
            if let Some(u) = unknown(&flags, &["folder", "ldconfig-path"]) {
                return Ok(u);
            }
            let folders: Vec<String> = flags
                .iter()
                .filter(|(f, _)| *f == "folder")
                .map(|(_, v)| v.to_string())
                .collect();
            if let Some(f) = folders.iter().find(|f| !clean_absolute(f)) {
                return Err(refused(
                    sub,
                    format!(
                        "--folder {} is not a clean absolute path",
                        crate::echo::quoted(f)
                    ),
                ));
            }
            NvidiaHook::UpdateLdcache(folders)
        }
        "enable-cuda-compat" => unknown(
            &flags,
            &[
                "host-driver-version",
                "host-cuda-version",
                "cuda-compat-container-root",
            ],
        )
        .unwrap_or(NvidiaHook::EnableCudaCompat),
        "disable-device-node-modification" => {
            unknown(&flags, &[]).unwrap_or(NvidiaHook::DisableDeviceNodeModification)
        }
        "update-application-profile" => {
            unknown(&flags, &[]).unwrap_or(NvidiaHook::UpdateApplicationProfile)
        }
        "chmod" => unknown(&flags, &["mode", "path"]).unwrap_or(NvidiaHook::Chmod),
        other => NvidiaHook::Unknown(crate::echo::clipped(other, 64)),
    })
}

fn refused(sub: &str, why: String) -> GpuError {
    GpuError::Refused(format!("NVIDIA CDI hook {sub}: {why}"))
}

/// `--flag value` and `--flag=value` pairs, in order; a lone word or a flag without a value
/// is kept with an empty value (and so counts as an unknown flag's use where it matters).
fn flag_values(args: &[String]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].trim_start_matches('-');
        if let Some((f, v)) = a.split_once('=') {
            out.push((f, v));
            i += 1;
        } else if args[i].starts_with('-') && i + 1 < args.len() && !args[i + 1].starts_with("--") {
            out.push((a, args[i + 1].as_str()));
            i += 2;
        } else {
            out.push((a, ""));
            i += 1;
        }
    }
    out
}

/// An absolute path with no `.`/`..` components, no empty name and no NUL.
fn clean_absolute(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.contains('\0')
        && p[1..]
            .trim_end_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn read(path: &str, args: &str) -> Result<NvidiaHook, GpuError> {
        let args = words(args);
        let (sub, rest) = recognise(path, &args).expect("recognised");
        parse(sub, rest)
    }

    #[test]
    fn nvidias_hooks_are_recognised_wherever_installed() {
        let a = words("nvidia-cdi-hook create-symlinks --link libcuda.so.1::/lib64/libcuda.so");
        assert!(recognise("/usr/bin/nvidia-cdi-hook", &a).is_some());
        assert!(recognise("/run/nvidia/toolkit/nvidia-cdi-hook", &a).is_some());
        let ctk = words("nvidia-ctk --debug hook update-ldcache --folder /lib64");
        assert_eq!(
            recognise("/usr/local/nvidia/toolkit/nvidia-ctk", &ctk).map(|(s, _)| s),
            Some("update-ldcache")
        );
        assert!(recognise("/usr/bin/nvidia-ctk", &words("nvidia-ctk cdi list")).is_none());
        assert!(recognise("/usr/bin/other-hook", &a).is_none());
        assert!(recognise("/usr/bin/nvidia-cdi-hook", &words("nvidia-cdi-hook")).is_none());
    }

    #[test]
    fn each_hook_of_nvidias_spec_is_read() {
        let h = "/usr/bin/nvidia-cdi-hook";
        assert_eq!(
            read(h, "nvidia-cdi-hook create-symlinks --link libcuda.so.580.159.04::/lib64/libcuda.so.1 --link=../libnvidia-allocator.so.1::/lib64/gbm/nvidia-drm_gbm.so").unwrap(),
            NvidiaHook::CreateSymlinks(vec![
                ("libcuda.so.580.159.04".into(), "/lib64/libcuda.so.1".into()),
                ("../libnvidia-allocator.so.1".into(), "/lib64/gbm/nvidia-drm_gbm.so".into()),
            ])
        );
        assert_eq!(
            read(
                h,
                "nvidia-cdi-hook update-ldcache --folder /lib64 --folder=/usr/lib64"
            )
            .unwrap(),
            NvidiaHook::UpdateLdcache(vec!["/lib64".into(), "/usr/lib64".into()])
        );
        assert_eq!(
            read(
                h,
                "nvidia-cdi-hook enable-cuda-compat --host-driver-version=580.159.04"
            )
            .unwrap(),
            NvidiaHook::EnableCudaCompat
        );
        assert_eq!(
            read(h, "nvidia-cdi-hook disable-device-node-modification").unwrap(),
            NvidiaHook::DisableDeviceNodeModification
        );
        assert_eq!(
            read(h, "nvidia-cdi-hook update-application-profile").unwrap(),
            NvidiaHook::UpdateApplicationProfile
        );
        assert_eq!(
            read(h, "nvidia-cdi-hook chmod --mode 755 --path /dev/dri").unwrap(),
            NvidiaHook::Chmod
        );
        assert_eq!(
            read(h, "nvidia-cdi-hook create-symlinks --csv-filename x.csv").unwrap(),
            NvidiaHook::Unknown("create-symlinks --csv-filename".into())
        );
        assert_eq!(
            read(h, "nvidia-cdi-hook future-thing --x").unwrap().name(),
            "future-thing"
        );
    }

    #[test]
    fn hostile_arguments_are_refused_by_name() {
        let h = "/usr/bin/nvidia-cdi-hook";
        for (args, want) in [
            (
                "create-symlinks --link x::/lib64/../../etc/passwd",
                "without `..`",
            ),
            ("create-symlinks --link x::lib64/relative", "absolute path"),
            ("create-symlinks --link /etc/shadow", "not TARGET::LINK"),
            ("create-symlinks --link ::/lib64/empty", "target non-empty"),
            ("update-ldcache --folder /lib64/../..", "clean absolute"),
        ] {
            let e = read(h, &format!("nvidia-cdi-hook {args}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("NVIDIA CDI hook"),
                "{args}: {e}"
            );
        }
        let many: Vec<String> = std::iter::once("create-symlinks".to_string())
            .chain((0..10_000).flat_map(|i| ["--link".to_string(), format!("t::/l/{i}")]))
            .collect();
        let e = parse(&many[0], &many[1..]).unwrap_err().to_string();
        assert!(e.contains("10000 links") && e.contains("4096"), "{e}");
        let long = vec!["--link".to_string(), format!("t::/{}", "a".repeat(1 << 20))];
        let e = parse("create-symlinks", &long).unwrap_err().to_string();
        assert!(
            e.contains("over 4096 bytes") && e.len() < 1024,
            "{}",
            e.len()
        );
    }

    #[test]
    fn hooks_become_plan_edits() {
        let mut p = Plan::default();
        NvidiaHook::CreateSymlinks(vec![
            ("libcuda.so.1".into(), "/lib64/libcuda.so".into()),
            ("libcuda.so.1".into(), "/lib64/libcuda.so".into()),
        ])
        .plan(&mut p);
        assert_eq!(p.links.len(), 1, "one link of each name");
        assert_eq!(
            (
                p.links[0].dir.as_str(),
                p.links[0].name.as_str(),
                p.links[0].target.as_str()
            ),
            ("/lib64", "libcuda.so", "libcuda.so.1")
        );
        NvidiaHook::DisableDeviceNodeModification.plan(&mut p);
        NvidiaHook::DisableDeviceNodeModification.plan(&mut p);
        assert_eq!(p.masked_paths, [MASKED_PARAMS]);
    }
}

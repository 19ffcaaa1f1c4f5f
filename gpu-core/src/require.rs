//! `NVIDIA_REQUIRE_*` expressions: space-separated terms are OR'ed, comma-separated factors inside
//! a term are AND'ed; a factor is `<name><op><value>` with name `cuda`, `driver`, `arch` or `brand`.

use std::cmp::Ordering;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// What a factor constrains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// The driver's CUDA version.
    Cuda,
    /// The kernel module version.
    Driver,
    /// The GPU's compute capability.
    Arch,
    /// The GPU's brand.
    Brand,
}

/// One `<name><op><value>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Factor {
    /// Name.
    pub name: Name,
    /// Operator.
    pub op: Op,
    /// Value as written.
    pub value: String,
}

/// A parsed expression: OR over terms, AND over factors.
pub type Expr = Vec<Vec<Factor>>;

/// The facts a requirement is checked against (one GPU, or the host when no GPU is selected).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// CUDA version `M.m`.
    pub cuda: Option<String>,
    /// Driver version.
    pub driver: Option<String>,
    /// Compute capability, `None` when unknown or no GPU.
    pub arch: Option<String>,
    /// Brand, `None` when unknown or no GPU.
    pub brand: Option<String>,
    /// True when checking without any selected GPU (arch/brand then hold).
    pub no_gpu: bool,
}

fn parse_factor(f: &str) -> Result<Factor, String> {
    let at = f
        .find(['<', '>', '=', '!'])
        .ok_or_else(|| format!("{f:?} has no operator"))?;
    let (name, rest) = f.split_at(at);
    let (op, value) = [
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v)))
    .ok_or_else(|| format!("{f:?} has a bad operator"))?;
    if value.is_empty() || value.starts_with(['<', '>', '=', '!']) {
        return Err(format!("{f:?} has a bad operator or no value"));
    }
    let name = match name.to_ascii_lowercase().as_str() {
        "cuda" => Name::Cuda,
        "driver" => Name::Driver,
        "arch" => Name::Arch,
        "brand" => Name::Brand,
        "" => return Err(format!("{f:?} has no name")),
        other => {
            return Err(format!(
                "unknown constraint {other:?} (known: cuda, driver, arch, brand)"
            ))
        }
    };
    if name == Name::Brand {
        if !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!("{f:?}: brand only takes = or !="));
        }
    } else {
        check_version(value).map_err(|why| format!("{f:?}: {value:?} is not a version ({why})"))?;
    }
    Ok(Factor {
        name,
        op,
        value: value.to_string(),
    })
}

/// Most parts of a dotted version (`580.95.05` has three).
const MAX_VERSION_PARTS: usize = 4;

/// A version is 1 to [`MAX_VERSION_PARTS`] dot-separated decimal numbers, each fitting in 32 bits:
/// no empty part, no sign, nothing a silent overflow could turn into 0.
fn check_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > MAX_VERSION_PARTS {
        return Err(format!("more than {MAX_VERSION_PARTS} parts"));
    }
    for p in parts {
        if p.is_empty() {
            return Err("an empty part".into());
        }
        if !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{} is not a number", crate::echo::quoted(p)));
        }
        if p.parse::<u32>().is_err() {
            return Err(format!("{} is too large", crate::echo::quoted(p)));
        }
    }
    Ok(())
}

/// Most factors in one expression; real ones have a handful.
const MAX_FACTORS: usize = 64;

/// Parses an expression. Every term and every factor must be non-empty: a stray comma is an
/// error, never a condition that holds.
pub fn parse(expr: &str) -> Result<Expr, String> {
    let mut terms: Expr = Vec::new();
    let mut count = 0usize;
    for t in expr.split_whitespace() {
        let mut term = Vec::new();
        for f in t.split(',') {
            if f.is_empty() {
                return Err(format!(
                    "{} has an empty condition (a stray comma)",
                    crate::echo::quoted(t)
                ));
            }
            count += 1;
            if count > MAX_FACTORS {
                return Err(format!("more than {MAX_FACTORS} conditions"));
            }
            term.push(
                parse_factor(f)
                    .map_err(|e| crate::echo::clipped(&e, 2 * crate::echo::ECHO_LIMIT))?,
            );
        }
        terms.push(term);
    }
    if terms.is_empty() {
        return Err("empty expression".into());
    }
    Ok(terms)
}

/// Compares dotted versions numerically; trailing `.0`s do not count. A part that is not a
/// number (only possible in a host-reported version) compares as 0.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<u64> {
        let mut v: Vec<u64> = s.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    };
    parts(a).cmp(&parts(b))
}

fn holds(f: &Factor, facts: &Facts) -> bool {
    let have = match f.name {
        Name::Cuda => facts.cuda.as_deref(),
        Name::Driver => facts.driver.as_deref(),
        Name::Arch => facts.arch.as_deref(),
        Name::Brand => facts.brand.as_deref(),
    };
    let Some(have) = have else {
        // Without a GPU, GPU properties hold vacuously; an unknown host version holds too. An
        // unknown property of a selected GPU does not.
        return facts.no_gpu || matches!(f.name, Name::Cuda | Name::Driver);
    };
    let ord = if f.name == Name::Brand {
        if have.eq_ignore_ascii_case(&f.value) {
            Ordering::Equal
        } else {
            Ordering::Less
        }
    } else {
        cmp_versions(have, &f.value)
    };
    match f.op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
    }
}

/// Whether any term holds entirely.
pub fn satisfied(expr: &Expr, facts: &Facts) -> bool {
    expr.iter().any(|t| t.iter().all(|f| holds(f, facts)))
}

/// Whether the expression constrains the CUDA version from below (for the hint in errors).
pub fn wants_newer_cuda(expr: &Expr) -> bool {
    expr.iter()
        .flatten()
        .any(|f| f.name == Name::Cuda && matches!(f.op, Op::Ge | Op::Gt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cuda: &str, driver: &str, brand: Option<&str>) -> Facts {
        Facts {
            cuda: Some(cuda.into()),
            driver: Some(driver.into()),
            arch: Some("9.0".into()),
            brand: brand.map(str::to_string),
            no_gpu: false,
        }
    }

    #[test]
    fn or_of_ands() {
        let e = parse("cuda>=12.2 brand=tesla,driver>=470,driver<471").unwrap();
        assert!(satisfied(&e, &facts("12.4", "550.54.14", Some("Tesla"))));
        assert!(satisfied(&e, &facts("11.4", "470.82.01", Some("Tesla"))));
        assert!(!satisfied(&e, &facts("11.4", "470.82.01", Some("GeForce"))));
        assert!(!satisfied(&e, &facts("11.4", "472.1", Some("Tesla"))));
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(cmp_versions("12", "12.0"), Ordering::Equal);
        assert_eq!(cmp_versions("12.10", "12.9"), Ordering::Greater);
        assert_eq!(cmp_versions("580.95.05", "580.95.5"), Ordering::Equal);
        let e = parse("arch>=8.0").unwrap();
        assert!(satisfied(&e, &facts("13.0", "580", None)));
    }

    #[test]
    fn malformed_expressions_say_why() {
        assert!(parse("cuda").unwrap_err().contains("operator"));
        assert!(parse("cuda=>12").unwrap_err().contains("operator"));
        assert!(parse("gpu>=1").unwrap_err().contains("unknown constraint"));
        assert!(parse("cuda>=twelve").unwrap_err().contains("not a version"));
        assert!(parse("brand>=tesla").unwrap_err().contains("brand"));
        assert!(parse("   ").is_err());
    }

    #[test]
    fn what_the_adversarial_run_slipped_through_is_refused() {
        // A stray comma used to form an empty term that held.
        let e = parse("cuda>=99.0 ,").unwrap_err();
        assert!(e.contains("empty condition"), "{e}");
        assert!(parse("cuda>=12.0,").is_err());
        assert!(parse(",cuda>=12.0").is_err());
        assert!(parse("cuda>=12.0,,driver>=500").is_err());
        // A number too large used to overflow into 0.
        let e = parse("cuda>=100000000000000000000").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        // Dots without numbers.
        for bad in [
            "cuda>=....",
            "cuda>=12.",
            "cuda>=.1",
            "driver<1..2",
            "cuda>=1.2.3.4.5",
            "cuda>=-1",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
        // A huge factor is echoed cut short.
        let huge = format!("cuda>={}", "9".repeat(100_000));
        assert!(parse(&huge).unwrap_err().len() < 1000);
        let many = vec!["cuda>=1"; 100].join(",");
        assert!(parse(&many).unwrap_err().contains("more than 64"));
        // Good input still parses.
        assert!(parse("cuda>=12.2 brand=tesla,driver>=470.82.01").is_ok());
    }

    #[test]
    fn unknown_properties() {
        let e = parse("brand=tesla").unwrap();
        let mut f = facts("13.0", "580", None);
        assert!(
            !satisfied(&e, &f),
            "unknown brand of a selected GPU fails closed"
        );
        f.no_gpu = true;
        assert!(satisfied(&e, &f), "no GPU selected: brand holds vacuously");
        let e = parse("cuda>=99.0").unwrap();
        assert!(!satisfied(&e, &facts("13.0", "580", None)));
        assert!(wants_newer_cuda(&e));
    }
}

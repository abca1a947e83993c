//! CPU selection: parse `0,2-5` lists and read the process's affinity mask.
//!
//! The default set of shard CPUs is the process's affinity mask, so `taskset`, systemd's
//! `CPUAffinity`, cgroup cpusets and Kubernetes' static CPU manager are all respected. A list that
//! names a CPU outside that mask is an error, not a silent fallback.

use crate::error::{Error, Result};

/// Upper bound on a CPU number in a list; guards against `0-4294967295` allocating a huge vector.
pub const MAX_CPU: usize = 4096;

/// Parses a CPU list such as `0,2-5` into sorted, unique CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(Error::Cpus(format!("empty item in cpu list {s:?}")));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a, s)?, parse_cpu(b, s)?),
            None => {
                let c = parse_cpu(part, s)?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(Error::Cpus(format!(
                "descending range {part:?} in cpu list"
            )));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_cpu(s: &str, whole: &str) -> Result<usize> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| Error::Cpus(format!("{s:?} is not a cpu number in list {whole:?}")))?;
    if n >= MAX_CPU {
        return Err(Error::Cpus(format!(
            "cpu {n} is out of range (max {})",
            MAX_CPU - 1
        )));
    }
    Ok(n)
}

/// The CPUs this process may run on (its affinity mask), sorted.
pub fn allowed_cpus() -> Vec<usize> {
    let mut v: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    v.sort_unstable();
    if v.is_empty() {
        v.push(0);
    }
    v
}

/// How the shards' CPUs are chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CpuSelection {
    /// Every CPU in the process's affinity mask (the default).
    #[default]
    All,
    /// Exactly these CPUs; each must be in the affinity mask.
    List(Vec<usize>),
    /// The first `n` CPUs of the affinity mask.
    Count(usize),
}

impl CpuSelection {
    /// Resolves the selection against the affinity mask `allowed`.
    pub fn resolve(&self, allowed: &[usize]) -> Result<Vec<usize>> {
        match self {
            CpuSelection::All => Ok(allowed.to_vec()),
            CpuSelection::List(list) => {
                if list.is_empty() {
                    return Err(Error::Cpus("empty cpu list".into()));
                }
                for c in list {
                    if !allowed.contains(c) {
                        return Err(Error::Cpus(format!(
                            "cpu {c} is not in this process's affinity mask {}",
                            format_cpu_list(allowed)
                        )));
                    }
                }
                Ok(list.clone())
            }
            CpuSelection::Count(n) => {
                if *n == 0 || *n > allowed.len() {
                    return Err(Error::Cpus(format!(
                        "{n} shards requested, {} cpus allowed ({})",
                        allowed.len(),
                        format_cpu_list(allowed)
                    )));
                }
                Ok(allowed[..*n].to_vec())
            }
        }
    }
}

/// Formats sorted CPUs back into the compact list form (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_cpu_list("0,2-5").unwrap(), vec![0, 2, 3, 4, 5]);
        assert_eq!(parse_cpu_list("3, 1,1").unwrap(), vec![1, 3]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in ["", "a", "1,,2", "5-3", "-1", "1-", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn selection_respects_the_mask() {
        let allowed = [0, 1, 4];
        assert_eq!(CpuSelection::All.resolve(&allowed).unwrap(), vec![0, 1, 4]);
        assert_eq!(
            CpuSelection::Count(2).resolve(&allowed).unwrap(),
            vec![0, 1]
        );
        assert!(CpuSelection::Count(4).resolve(&allowed).is_err());
        assert!(CpuSelection::List(vec![2]).resolve(&allowed).is_err());
        assert_eq!(
            CpuSelection::List(vec![4]).resolve(&allowed).unwrap(),
            vec![4]
        );
    }
}

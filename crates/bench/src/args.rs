//! A small command-line parser: `--key value` options (repeatable),
//! positional arguments, and everything after `--` kept verbatim.

use std::str::FromStr;

#[derive(Debug, Default)]
pub struct Args {
    options: Vec<(String, String)>,
    pub positional: Vec<String>,
    /// Everything after a bare `--`.
    pub rest: Vec<String>,
    /// Option names that take no value.
    switches: Vec<String>,
}

impl Args {
    /// `switches` lists the option names (without `--`) that take no value.
    pub fn parse(raw: &[String], switches: &[&str]) -> Result<Args, String> {
        let mut args = Args::default();
        let mut i = 0;
        while i < raw.len() {
            let a = &raw[i];
            if a == "--" {
                args.rest = raw[i + 1..].to_vec();
                break;
            }
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    args.options.push((k.to_string(), v.to_string()));
                } else if switches.contains(&name) {
                    args.switches.push(name.to_string());
                } else {
                    let Some(v) = raw.get(i + 1) else {
                        return Err(format!("option --{name} needs a value"));
                    };
                    args.options.push((name.to_string(), v.clone()));
                    i += 1;
                }
            } else {
                args.positional.push(a.clone());
            }
            i += 1;
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("missing required option --{name}"))
    }

    pub fn num<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("option --{name}: '{v}' is not a valid number")),
        }
    }

    /// Fails on options nobody asked for, so a typo is not silently ignored.
    pub fn check_known(&self, known: &[&str]) -> Result<(), String> {
        for (k, _) in &self.options {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option --{k}"));
            }
        }
        Ok(())
    }
}

/// Parses a comma-separated list of numbers, e.g. `100,1000,5000`.
pub fn num_list(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| format!("'{p}' in '{s}' is not a number"))
        })
        .collect()
}

//! Secrets are never echoed in config errors. The `config` crate's TOML
//! errors quote the offending source line, so a syntax error on the
//! `password` line once put the password in the journal. Every message a
//! config load reports goes through [`Secrets::mask`]: the values of secret
//! keys, found by a tolerant scan of the file as written (it may not parse)
//! and in the `EDGE_INFER__*` environment, are replaced with `***`.

/// What replaces a secret.
pub const MASK: &str = "***";

/// Whether a key holds a secret: `password` today, and any future key
/// named like one (`*password*`, `*secret*`, `*_key*`, `*token*`). A key
/// ending in `_file` (`client_key_file`) holds where a secret is kept, not
/// the secret: its path must stay in messages, which say which file is
/// wrong. Nor does a `public_*` key (`[updates] public_keys`): a public
/// key is meant to be shown, and a message about a wrong one must show it.
pub fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.ends_with("_file") || name.starts_with("public_") {
        return false;
    }
    ["password", "secret", "_key", "token"]
        .iter()
        .any(|s| name.contains(s))
}

/// The secret values of one config, and the file lines that hold them.
#[derive(Debug, Default)]
pub struct Secrets {
    /// (line as written, the same line with its secrets masked).
    lines: Vec<(String, String)>,
    /// Every secret value, longest first, so one that contains another is
    /// masked whole.
    values: Vec<String>,
}

impl Secrets {
    /// Scans the config file's text and the environment's `EDGE_INFER__*`
    /// variables for secret values.
    pub fn scan<I>(file_text: &str, env: I) -> Secrets
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut s = Secrets::default();
        let mut lines = file_text.lines();
        while let Some(line) = lines.next() {
            let found = scan_line(line);
            let mut masked = String::with_capacity(line.len());
            let mut at = 0;
            for value in &found.secrets {
                masked.push_str(&line[at..value.start]);
                masked.push_str(MASK);
                at = value.end;
                s.add_value(&line[value.clone()]);
            }
            masked.push_str(&line[at..]);
            if !found.secrets.is_empty() {
                s.lines.push((line.to_string(), masked));
            }
            // A secret in a multi-line string: every line up to the closing
            // delimiter is secret.
            if let Some(close) = found.open_multiline {
                for inner in lines.by_ref() {
                    let (secret, rest) = match inner.find(close) {
                        Some(end) => (&inner[..end], Some(&inner[end..])),
                        None => (inner, None),
                    };
                    s.add_value(secret);
                    s.lines
                        .push((inner.to_string(), format!("{MASK}{}", rest.unwrap_or(""))));
                    if rest.is_some() {
                        break;
                    }
                }
            }
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("EDGE_INFER__") else {
                continue;
            };
            if key.rsplit("__").next().is_some_and(is_secret_key) {
                s.add_value(&value);
            }
        }
        s.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s.values.dedup();
        s
    }

    /// Whether the config file itself holds a secret value (not only the
    /// environment).
    pub fn in_file(&self) -> bool {
        !self.lines.is_empty()
    }

    fn add_value(&mut self, value: &str) {
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        self.values.push(value.to_string());
        // As the TOML parser reads it, should a message quote it that way.
        let unescaped = value.replace("\\\"", "\"").replace("\\\\", "\\");
        if unescaped != value {
            self.values.push(unescaped);
        }
    }

    /// `text` with every secret replaced by `***`: first the file lines
    /// that hold one, whole (a TOML error quotes its line as written), then
    /// every remaining occurrence of a secret value.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (line, masked) in &self.lines {
            let line = line.trim();
            if !line.is_empty() {
                out = out.replace(line, masked.trim());
            }
        }
        for value in &self.values {
            out = out.replace(value.as_str(), MASK);
        }
        out
    }
}

/// What one line holds.
struct LineScan {
    /// Byte ranges of the secret values on the line, in order.
    secrets: Vec<std::ops::Range<usize>>,
    /// A secret multi-line string opened on this line and not closed: its
    /// closing delimiter.
    open_multiline: Option<&'static str>,
}

/// Finds every `key = value` on a line, tolerantly: the line may be broken
/// TOML (that is when errors quote it). A key is the text before '=' back
/// to the start of the line, a '{' or a ','; its last dotted part names it.
/// A value runs to its closing quote (or the line's end, unterminated), or
/// unquoted to a ',', '}', '#' or the line's end; an inline table's keys
/// are scanned in turn; a '#' outside a value ends the line.
fn scan_line(line: &str) -> LineScan {
    let mut out = LineScan {
        secrets: Vec::new(),
        open_multiline: None,
    };
    let mut key_from = 0;
    while let Some(eq) = line[key_from..].find('=').map(|i| key_from + i) {
        if line[key_from..eq].contains('#') {
            break; // a comment
        }
        let key = line[key_from..eq]
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .trim();
        let secret = is_secret_key(key);
        let start = eq + 1 + (line[eq + 1..].len() - line[eq + 1..].trim_start().len());
        let rest = &line[start..];
        // The value's range, and where scanning goes on after it.
        let (value, after) = if rest.starts_with('{') {
            // An inline table: its keys come next.
            key_from = start + 1;
            continue;
        } else if let Some(delim) = ["\"\"\"", "'''"].into_iter().find(|d| rest.starts_with(d)) {
            let from = start + 3;
            match line[from..].find(delim) {
                Some(end) => (from..from + end, from + end + 3),
                None => {
                    if secret {
                        out.open_multiline = Some(delim);
                    }
                    (from..line.len(), line.len())
                }
            }
        } else if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let from = start + 1;
            let end = closing_quote(&line[from..], q).map_or(line.len(), |e| from + e);
            (from..end, (end + 1).min(line.len()))
        } else {
            let end = rest.find([',', '}', '#']).map_or(line.len(), |e| start + e);
            let len = line[start..end].trim_end().len();
            (start..start + len, end)
        };
        if secret && !value.is_empty() {
            out.secrets.push(value);
        }
        // The next key, if any, follows a ',' or '{' after this value.
        match line[after..].find([',', '{', '#']) {
            Some(i) if line[after + i..].starts_with('#') => break,
            Some(i) => key_from = after + i + 1,
            None => break,
        }
    }
    out
}

/// Where the quote `q` that ends a string starting at `s` is; in a basic
/// ("...") string a backslash escapes the next character.
fn closing_quote(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if q == '"' => escaped = true,
            c if c == q => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(file: &str, text: &str) -> String {
        Secrets::scan(file, Vec::new()).mask(text)
    }

    #[test]
    fn secret_keys_are_recognised_by_name() {
        for key in [
            "password",
            "PASSWORD",
            "mqtt_password",
            "client_secret",
            "api_key",
            "private_key",
            "token",
            "access_token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "username",
            "host",
            "keys",
            "max_payload_bytes",
            "key",
            "client_key_file",
            "ca_file",
            "public_keys",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn values_are_found_however_they_are_written() {
        let cases = [
            ("password = \"hunter2-secret\"", "password = \"***\""),
            ("password = \"hunter2-secret", "password = \"***"),
            ("password = hunter2-secret", "password = ***"),
            ("password=hunter2-secret # note", "password=*** # note"),
            ("  \"password\" = 'hunter2-secret'", "\"password\" = '***'"),
            (
                "mqtt.password = \"hunter2-secret\"",
                "mqtt.password = \"***\"",
            ),
            (
                "mqtt = { username = \"u\", password = \"hunter2-secret\" }",
                "mqtt = { username = \"u\", password = \"***\" }",
            ),
            ("password = \"hun\\\"ter2\"", "password = \"***\""),
            ("api_key = 12345678", "api_key = ***"),
        ];
        for (line, want) in cases {
            let text = format!("3 | {line}\n  |   ^\nsomething is wrong");
            let got = masked(line, &text);
            assert!(
                got.contains(want.trim()),
                "{line:?}: want {want:?} in {got:?}"
            );
            assert!(!got.contains("hunter2"), "{line:?}: {got:?}");
        }
    }

    #[test]
    fn other_values_are_left_alone() {
        let file = "host = \"broker=1\"\nusername = \"hunter\"\npassword = \"pw-secret-1\"\n";
        let text = "line 1: host \"broker=1\", user hunter, pw-secret-1";
        assert_eq!(
            masked(file, text),
            "line 1: host \"broker=1\", user hunter, ***"
        );
    }

    #[test]
    fn a_multi_line_secret_is_masked_on_every_line() {
        let file = "password = \"\"\"first-half\nsecond-half\"\"\"\nport = 1\n";
        let got = masked(
            file,
            "2 | second-half\"\"\"\n1 | password = \"\"\"first-half",
        );
        assert!(
            !got.contains("first-half") && !got.contains("second-half"),
            "{got}"
        );
    }

    #[test]
    fn environment_secrets_are_masked() {
        let env = vec![
            (
                "EDGE_INFER__MQTT__PASSWORD".to_string(),
                "from-env".to_string(),
            ),
            ("EDGE_INFER__MQTT__HOST".to_string(), "broker".to_string()),
            ("OTHER_PASSWORD".to_string(), "not-ours".to_string()),
        ];
        let s = Secrets::scan("", env);
        assert_eq!(s.mask("from-env broker not-ours"), "*** broker not-ours");
    }

    #[test]
    fn empty_values_mask_nothing() {
        assert_eq!(masked("password = \"\"\n", "all clear"), "all clear");
    }
}

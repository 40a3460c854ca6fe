//! Keeping secrets out of what m3query prints: one helper for every URL that is shown, logged
//! or tagged, and one for config error messages.
//!
//! - [`redact_urls`]: the password of every `scheme://user:password@host` in a text becomes
//!   `xxxxx` (what Go's `url.URL.Redacted` prints, as Prometheus shows URLs), the user stays so
//!   an operator can still tell which credential is in use.
//! - [`is_secret_key`]: whether a config key holds a secret (`bearerToken`, `password`,
//!   `access_token`, `Authorization`, anything with `token`, `password` or `secret`).
//! - [`redact_config_error`]: a parser's error message with every secret of the config text
//!   it came from removed: the quoted line and any value the parser echoes.
//!
//! Pure string functions, so the remote-read client, telemetry and the server share them.

use std::borrow::Cow;

/// What replaces a URL's password.
pub const URL_PASSWORD_MASK: &str = "xxxxx";

/// What replaces a secret config value.
pub const SECRET_MASK: &str = "<redacted>";

/// `text` with the password of every URL's userinfo (`http://user:pass@host`) replaced by
/// [`URL_PASSWORD_MASK`]. Borrowed when there is nothing to redact (the common case).
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        // The authority ends where a path, query or fragment starts, or where the URL ends in
        // running text.
        let end = after
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '{' | '}' | ','
                ) || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => {
                    out.push_str(&authority[..=colon]);
                    out.push_str(URL_PASSWORD_MASK);
                    out.push_str(&authority[at..]);
                    changed = true;
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether a config key (any case, `_`/`-` ignored) holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    k.contains("token")
        || k.contains("password")
        || k.contains("secret")
        || k.contains("apikey")
        || k.contains("credential")
        || k == "authorization"
        || k == "proxyauthorization"
        || k == "cookie"
}

/// Whether a config key is a map of HTTP headers, every value of which is treated as secret
/// (`Authorization`, `X-Api-Key`, a tenant's token under any name).
fn is_headers_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "headers" || k == "http_headers" || k == "httpheaders"
}

/// One `key: value` found on a line: the key and the value's byte range in the line.
struct Pair {
    key: String,
    value: std::ops::Range<usize>,
}

/// The `key: value` pairs of one YAML line, block (`key: v`, `- key: v`) or flow
/// (`{a: b, c: d}`) style. Good enough for finding secrets; not a YAML parser.
fn pairs(line: &str) -> Vec<Pair> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if bytes.get(i + 1).is_none_or(|c| *c == b' ' || *c == b'\t') => {
                // The key runs back to a separator.
                let key_end = i;
                let mut s = key_end;
                while s > 0 && !matches!(bytes[s - 1], b' ' | b'\t' | b'{' | b',' | b'[') {
                    s -= 1;
                }
                let key = line[s..key_end].trim_matches(|c| c == '"' || c == '\'');
                // The value runs to the end of the line (block) or the next `,`/`}` (flow),
                // less a trailing comment.
                let vs = i + 1;
                let mut ve = vs;
                let mut in_quote: Option<u8> = None;
                while ve < bytes.len() {
                    let c = bytes[ve];
                    match in_quote {
                        Some(q) if c == q => in_quote = None,
                        Some(_) => {}
                        None if c == b'"' || c == b'\'' => in_quote = Some(c),
                        None if depth > 0 && matches!(c, b',' | b'}' | b']') => break,
                        None if c == b'#' && ve > 0 && bytes[ve - 1] == b' ' => break,
                        None => {}
                    }
                    ve += 1;
                }
                let raw = &line[vs..ve];
                let lead = raw.len() - raw.trim_start().len();
                let trimmed = raw.trim();
                if !key.is_empty() {
                    out.push(Pair {
                        key: key.to_string(),
                        value: vs + lead..vs + lead + trimmed.len(),
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '-']).len()
}

/// Where a flow collection opened at `open` (a `{` or `[`) closes, or the line's end.
fn matching_close(line: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (i, c) in line.bytes().enumerate().skip(open) {
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    line.len()
}

/// Value ranges of one line that hold secrets: values of secret keys, and every value inside
/// a flow-style headers map (`headers: {X-Api-Key: k}`).
fn secret_ranges(line: &str) -> Vec<std::ops::Range<usize>> {
    let ps = pairs(line);
    let mut maps: Vec<std::ops::Range<usize>> = Vec::new();
    for p in &ps {
        if is_headers_key(&p.key) && line[p.value.clone()].starts_with('{') {
            maps.push(p.value.start..matching_close(line, p.value.start));
        }
    }
    let mut out = Vec::new();
    for p in ps {
        let v = &line[p.value.clone()];
        if v.is_empty() {
            continue;
        }
        let in_map = maps
            .iter()
            .any(|m| p.value.start > m.start && p.value.end <= m.end);
        if !(in_map || is_secret_key(&p.key)) {
            continue;
        }
        if v.starts_with('{') && !in_map && !is_secret_key(&p.key) {
            continue;
        }
        // A flow collection as the value (`token: [x]`, `password: {a: b}`): all of it.
        let end = if v.starts_with('[') || v.starts_with('{') {
            (matching_close(line, p.value.start) + 1).min(line.len())
        } else {
            p.value.end
        };
        out.push(p.value.start..end);
    }
    out
}

/// The secret values in config text: values of secret keys and of header maps, as written
/// (quotes included) and unquoted.
pub fn secret_values(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &str| {
        let v = v.trim();
        let mut add = |s: &str| {
            if !s.is_empty() && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        add(v);
        add(v.trim_matches(|c| c == '"' || c == '\''));
        // The items of a flow collection, which a parser may echo one by one.
        if let Some(inner) = v
            .strip_prefix(['[', '{'])
            .and_then(|i| i.strip_suffix([']', '}']))
        {
            for item in inner.split(',') {
                let item = item.rsplit(": ").next().unwrap_or(item).trim();
                add(item);
                add(item.trim_matches(|c| c == '"' || c == '\''));
            }
        }
    };
    // Indentation of an open block-style headers map: lines indented deeper are its entries.
    let mut headers_block: Option<usize> = None;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let ind = indent(line);
        if let Some(h) = headers_block {
            if ind > h {
                for p in pairs(line) {
                    push(&line[p.value]);
                }
                continue;
            }
            headers_block = None;
        }
        for r in secret_ranges(line) {
            push(&line[r]);
        }
        if pairs(line)
            .iter()
            .any(|p| is_headers_key(&p.key) && p.value.is_empty())
        {
            headers_block = Some(ind);
        }
    }
    out
}

/// Shortest secret replaced wherever it appears in a message. Shorter ones would garble the
/// message (a password `a`); they are still removed from `key: value` lines.
const MIN_SECRET_LEN: usize = 3;

/// `message` (a config error) with secrets removed: every value of a secret key or header
/// map in `source` (the config text after interpolation, so values from the environment are
/// found too), any `secretKey: value` text in the message itself, and URL passwords.
pub fn redact_config_error(message: &str, source: &str) -> String {
    let mut secrets = secret_values(source);
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut msg = message.to_string();
    for s in &secrets {
        if s.len() >= MIN_SECRET_LEN && msg.contains(s.as_str()) {
            msg = msg.replace(s.as_str(), SECRET_MASK);
        }
    }
    // Quoted lines: `password: x`, `headers: {A: b}` (also short values and those the
    // scan of the source could not see).
    let mut out = String::with_capacity(msg.len());
    for (n, line) in msg.split_inclusive('\n').enumerate() {
        if n > 0 || !line.is_empty() {
            out.push_str(&redact_line(line));
        }
    }
    redact_urls(&out).into_owned()
}

/// One line with the values of its secret keys and header maps masked.
fn redact_line(line: &str) -> String {
    let mut ranges: Vec<std::ops::Range<usize>> = secret_ranges(line)
        .into_iter()
        .filter(|r| &line[r.clone()] != SECRET_MASK)
        .collect();
    if ranges.is_empty() {
        return line.to_string();
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    for r in ranges {
        if r.start < pos {
            continue;
        }
        out.push_str(&line[pos..r.start]);
        out.push_str(SECRET_MASK);
        pos = r.end;
    }
    out.push_str(&line[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact_urls("http://u:p4ss@h:9090/api/v1/read"),
            "http://u:xxxxx@h:9090/api/v1/read"
        );
        assert_eq!(redact_urls("https://h/x?a=b@c"), "https://h/x?a=b@c");
        assert_eq!(redact_urls("http://user@h/"), "http://user@h/");
        assert!(matches!(redact_urls("no url here"), Cow::Borrowed(_)));
        assert_eq!(
            redact_urls(
                "error sending request for url (http://a:b@h:1/x): refused, see https://c:d@e"
            ),
            "error sending request for url (http://a:xxxxx@h:1/x): refused, see https://c:xxxxx@e"
        );
        assert_eq!(
            redact_urls("url: \"http://a:s3:cret@h\""),
            "url: \"http://a:xxxxx@h\""
        );
    }

    #[test]
    fn secret_keys() {
        for k in [
            "bearerToken",
            "password",
            "access_token",
            "accessToken",
            "Authorization",
            "client_secret",
            "X-Api-Key",
            "api_key",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["username", "url", "name", "timeout"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn config_errors_lose_their_secrets() {
        let src = "remoteRead:\n  - url: http://h\n    bearerToken: tok-123\n    basicAuth: {username: u, password: \"pw, with comma\"}\n    headers:\n      X-Scope-OrgID: tenant-secret\n      Authorization: Bearer abcdef\n    timeout: soon\ntracing:\n  otlp: {headers: {api-key: k-999}}\n  lightstep: {access_token: ls-tok}\n";
        let vals = secret_values(src);
        for v in [
            "tok-123",
            "pw, with comma",
            "tenant-secret",
            "Bearer abcdef",
            "k-999",
            "ls-tok",
        ] {
            assert!(vals.iter().any(|x| x == v), "{v} not in {vals:?}");
        }
        assert!(!vals.iter().any(|x| x == "soon" || x == "u"), "{vals:?}");
        assert!(secret_values("token: [abc-1, \"d-2\"]\n").contains(&"d-2".to_string()));
        assert_eq!(
            redact_config_error(" 3 |   bearerToken: [s3cr3t]\n", ""),
            " 3 |   bearerToken: <redacted>\n"
        );
        let msg = "line 3: invalid type: string \"tok-123\"\n  3 |     bearerToken: tok-123\n  |  Bearer abcdef and tenant-secret and ls-tok\n";
        let r = redact_config_error(msg, src);
        for v in ["tok-123", "abcdef", "tenant-secret", "ls-tok"] {
            assert!(!r.contains(v), "{r}");
        }
        assert!(r.contains("line 3") && r.contains("bearerToken"), "{r}");
        // A short value is still masked on a quoted line; URL passwords too.
        let r = redact_config_error(
            "  4 |  basicAuth: {username: u, password: ab}\n url http://x:yz@h",
            "",
        );
        assert!(!r.contains("ab}") && !r.contains("yz"), "{r}");
        assert!(r.contains("username: u"), "{r}");
    }
}

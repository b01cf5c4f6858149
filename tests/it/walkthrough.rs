//! The README's walkthrough, run from README.md itself against a fresh
//! server: every `curl` in it is sent, and every answer its comments show is
//! compared with what came back (`...` stands for anything, and scores and
//! timings are masked), so a change that breaks the walkthrough fails here.

use crate::support::{TestServer, free_port};
use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One command of the walkthrough and the answers its comments show.
struct Step {
    command: String,
    /// A heredoc's text: the command's standard input.
    stdin: Option<String>,
    expected: Vec<String>,
}

/// The commands of the first `sh` block after `heading`, in order.
fn steps(readme: &str, heading: &str) -> Vec<Step> {
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("the README has {heading:?}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the walkthrough is a sh block");
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = block.lines();
    // Whether a comment here may be the answer of the step before.
    let mut answering = false;
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() {
            answering = false;
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            let is_answer = comment.starts_with('{')
                || comment.starts_with("sluice_")
                || status_of(comment).is_some();
            match steps.last_mut() {
                Some(step) if answering && is_answer => step.expected.push(comment.to_owned()),
                _ => answering = false,
            }
            continue;
        }
        // A trailing remark after three spaces is not part of the command.
        let command = line.split("   # ").next().unwrap_or(line).to_owned();
        let stdin = command.ends_with("<<'JSON'").then(|| {
            let mut text = String::new();
            for body in lines.by_ref() {
                if body == "JSON" {
                    break;
                }
                text.push_str(body);
                text.push('\n');
            }
            text
        });
        steps.push(Step {
            command,
            stdin,
            expected: Vec::new(),
        });
        answering = true;
    }
    steps
}

/// `409: {…}` → (409, `{…}`).
fn status_of(comment: &str) -> Option<(u16, &str)> {
    let (status, rest) = comment.split_once(": ")?;
    (status.len() == 3)
        .then(|| status.parse().ok())
        .flatten()
        .map(|s| (s, rest))
}

/// Splits a command line into words: single and double quotes keep a word
/// whole (`$NAME` is expanded later, by [`expand`]), and `|` separates the
/// commands of a pipeline.
fn words(line: &str) -> Vec<Vec<String>> {
    let mut pipeline = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut double_quoted = false;
    for c in line.chars() {
        match c {
            '\'' if !double_quoted => {
                quoted = !quoted;
                in_word = true;
            }
            '"' if !quoted => {
                double_quoted = !double_quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted && !double_quoted => {
                if in_word {
                    pipeline
                        .last_mut()
                        .expect("a command")
                        .push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '|' if !quoted && !double_quoted => pipeline.push(Vec::new()),
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        pipeline.last_mut().expect("a command").push(word);
    }
    pipeline
}

/// Masks the values that differ from run to run: scores and timings.
fn masked(text: &str) -> String {
    let mut out = text.to_owned();
    for key in ["\"score\":", "\"queued_ms\":", "\"waited_ms\":"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(key) {
            let start = from + at + key.len();
            let end = out[start..]
                .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "#");
            from = start + 1;
        }
    }
    out
}

/// Whether `text` matches `pattern`, where `...` and `<url>` match anything.
fn matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.replace("<url>", "...");
    let parts: Vec<&str> = pattern.split("...").collect();
    let (first, rest) = parts.split_first().expect("split gives one part");
    let Some(mut left) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return left.is_empty();
    };
    for part in middle {
        match left.find(part) {
            Some(at) => left = &left[at + part.len()..],
            None => return false,
        }
    }
    left.ends_with(last)
}

/// The JSON a comment shows, without a remark after it.
fn shown_json(comment: &str) -> &str {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in comment.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &comment[..=i];
                }
            }
            _ => {}
        }
    }
    comment
}

/// Runs one `curl …` pipeline; its status and its output after the pipes.
async fn curl(
    s: &TestServer,
    pipeline: &[Vec<String>],
    stdin: Option<&str>,
    hook_port: u16,
    vars: &HashMap<String, String>,
) -> (u16, String) {
    let args: Vec<String> = pipeline[0].iter().map(|w| expand(w, vars)).collect();
    let mut method = None;
    let mut body: Option<String> = None;
    let mut url = None;
    let mut headers = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "-s" => {}
            "-X" => {
                i += 1;
                method = Some(args[i].clone());
            }
            "--json" => {
                i += 1;
                body = Some(args[i].clone());
                headers.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            "-H" => {
                i += 1;
                let (name, value) = args[i].split_once(": ").expect("a header");
                headers.push((name.to_owned(), value.to_owned()));
            }
            "-d" => {
                i += 1;
                assert_eq!(args[i], "@-", "only -d @- is read");
                body = Some(stdin.expect("a heredoc").to_owned());
            }
            "<<JSON" => {}
            other if other.starts_with('-') => panic!("curl option {other} is not understood"),
            other => url = Some(other.to_owned()),
        }
        i += 1;
    }
    let url = url.expect("a URL");
    let url = format!(
        "{}{}",
        s.url,
        url.strip_prefix("localhost:7070")
            .expect("the walkthrough's server")
    );
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    let mut request = s
        .http
        .request(method.parse().expect("a method"), &url)
        .timeout(Duration::from_secs(10));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.replace("8090", &hook_port.to_string()));
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    let mut text = response.text().await.expect("a body");
    for command in &pipeline[1..] {
        text = match command.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["grep", "-v", pattern] => text
                .lines()
                .filter(|l| !grep(pattern, l))
                .map(|l| format!("{l}\n"))
                .collect(),
            ["grep", pattern] => text
                .lines()
                .filter(|l| grep(pattern, l))
                .map(|l| format!("{l}\n"))
                .collect(),
            ["head", "-c", n] => text.chars().take(n.parse().expect("a count")).collect(),
            ref other => panic!("a pipe into {other:?} is not understood"),
        };
    }
    (status, text)
}

/// `word` with each `$NAME` replaced by its value.
fn expand(word: &str, vars: &HashMap<String, String>) -> String {
    let mut out = word.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// `grep` with `^` and `$` anchors, otherwise a plain substring.
fn grep(pattern: &str, line: &str) -> bool {
    match (pattern.strip_prefix('^'), pattern.strip_suffix('$')) {
        (Some(start), _) => line.starts_with(start),
        (_, Some(end)) => line.ends_with(end),
        _ => line.contains(pattern),
    }
}

/// Starts the example function service on `port` and waits until it listens.
fn function_service(port: u16) -> Child {
    let child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/webhook.py"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the example function service");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the function service did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test]
async fn the_readme_walkthrough_answers_as_its_comments_show() {
    let steps = steps(README, "## A walkthrough with curl");
    assert!(steps.len() > 20, "the walkthrough was not found whole");
    walk(&steps, Some(TestServer::embedded().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_authenticated_walkthrough_answers_as_its_comments_show() {
    let steps = steps(README, "### Step by step, with keys");
    assert!(steps.len() > 12, "the walkthrough was not found whole");
    walk(&steps, None).await;
}

const README: &str = include_str!("../../README.md");

/// Runs `steps` against `server`, or the one a `sluice serve` step starts,
/// checking every answer their comments show.
async fn walk(steps: &[Step], mut server: Option<TestServer>) {
    let shown: usize = steps.iter().map(|s| s.expected.len()).sum();
    assert!(
        shown >= 8,
        "only {shown} answers were found in the comments"
    );
    let hook_port = free_port();
    let mut service: Option<Child> = None;
    let mut vars = HashMap::new();
    let mut data_dir = None;
    for step in steps {
        let pipeline = words(&step.command);
        let first = pipeline[0].first().map(String::as_str);
        match first {
            Some("python3") => service = Some(function_service(hook_port)),
            Some("kill") => {
                let mut child = service.take().expect("a service to stop");
                child.kill().expect("kill");
                child.wait().expect("it stops");
            }
            Some("sluice") if pipeline[0].get(1).map(String::as_str) == Some("serve") => {
                let data = tempfile::tempdir().expect("temp dir");
                data_dir = Some(data.path().to_path_buf());
                let mut config = sluice_server::config::Config {
                    listen: "127.0.0.1:0".into(),
                    data_dir: data.path().to_path_buf(),
                    ..Default::default()
                };
                match &pipeline[0][2..] {
                    [flag, mode, amp] if flag == "--auth" && amp == "&" => {
                        config.auth = mode.clone()
                    }
                    other => panic!("sluice serve {other:?} is not understood"),
                }
                server = Some(TestServer::start_in(config, data).await);
            }
            Some("sluice") => {
                let args: Vec<String> = pipeline[0][1..].iter().map(|w| expand(w, &vars)).collect();
                sluice(data_dir.as_deref().expect("a server first"), &args);
            }
            Some("sleep") => {
                let seconds: f64 = pipeline[0][1].parse().expect("seconds");
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            }
            Some(assignment) if assignment.contains("=$(sluice") => {
                // NAME=$(sluice … | tail -n 1): the last line of its output.
                let (name, _) = assignment.split_once('=').expect("an assignment");
                let last = &pipeline[1];
                assert_eq!(last, &["tail", "-n", "1)"], "{}", step.command);
                let args = &pipeline[0][1..];
                let out = sluice(data_dir.as_deref().expect("a server first"), args);
                let value = out.lines().last().expect("a last line").to_owned();
                vars.insert(name.to_owned(), value);
            }
            Some("curl") => {
                let s = server.as_ref().expect("a server");
                let (status, text) =
                    curl(s, &pipeline, step.stdin.as_deref(), hook_port, &vars).await;
                assert!(status < 500, "{}: {status} {text}", step.command);
                let lines: Vec<&str> = text.lines().collect();
                for expected in &step.expected {
                    if expected.starts_with("sluice_") {
                        assert!(
                            lines.contains(&expected.as_str()),
                            "{}: no line {expected:?} in\n{text}",
                            step.command
                        );
                        continue;
                    }
                    let (want_status, shown) = match status_of(expected) {
                        Some((code, rest)) => (Some(code), rest),
                        None => (None, expected.as_str()),
                    };
                    if let Some(code) = want_status {
                        assert_eq!(status, code, "{}: {text}", step.command);
                    }
                    let pattern = masked(shown_json(shown));
                    let answer = masked(text.trim());
                    assert!(
                        matches(&pattern, &answer),
                        "{}\n  shows {pattern}\n  got   {answer}",
                        step.command
                    );
                }
            }
            other => panic!("the walkthrough runs {other:?}, which this test does not"),
        }
    }
    if let Some(mut child) = service {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `sluice ARGS --data-dir DIR`; its standard output.
fn sluice(data_dir: &std::path::Path, args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SLUICE_STORE")
        .env_remove("SLUICE_DATA_DIR")
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_pattern_matcher_matches_only_what_it_shows() {
    assert!(matches(r#"{"a":1,...}"#, r#"{"a":1,"b":{"c":2}}"#));
    assert!(matches(r#"{...,"b":2}"#, r#"{"a":1,"b":2}"#));
    assert!(!matches(r#"{"a":1,...}"#, r#"{"a":2,"b":1}"#));
    assert!(!matches(r#"{"a":1}"#, r#"{"a":1,"b":1}"#));
    assert_eq!(
        masked(r#"{"score":0.05000000074505806,"queued_ms":1e-3}"#),
        r#"{"score":#,"queued_ms":#}"#
    );
    assert_eq!(shown_json(r#"{"a":"}"}   (or more)"#), r#"{"a":"}"}"#);
}

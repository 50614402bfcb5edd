//! Tokens on every write route, open reads, the producer rate limit and the
//! SSE connection caps, against the real binary.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::Duration;

use anyhow::{Result, ensure};
use eddy_tests::{Host, async_process_config, execution};
use serde_json::json;

const TOKEN: &str = "s3cret-token";

fn config() -> Result<String> {
    Ok(async_process_config()?.replacen(
        "[http]\n",
        &format!(
            "[http]\ntoken = \"{TOKEN}\"\nproduce_rate_per_sec = 2.0\nproduce_burst = 5\nsse_max_clients = 3\nsse_max_per_address = 2\n"
        ),
        1,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn write_routes_need_the_token_reads_stay_open() -> Result<()> {
    let host = Host::start(&config()?).await?;
    let event = json!({ "value": execution("e1", "k1", 1, "STARTED") }).to_string();
    let schema = json!({ "schema": "\"string\"" }).to_string();
    // Every write route of the API (plugin deploys and state rebuilds have
    // their own admin token, tested with them).
    let writes: Vec<(&str, String, String)> = vec![
        (
            "POST",
            "/v1/topics/async-process-execution/records".into(),
            event.clone(),
        ),
        ("POST", "/async-process".into(), "{}".into()),
        (
            "POST",
            "/v1/pipelines/async-process/dead-letters/1/replay".into(),
            "{}".into(),
        ),
        (
            "DELETE",
            "/v1/pipelines/async-process/dead-letters/1".into(),
            String::new(),
        ),
        (
            "POST",
            "/v1/pipelines/async-process/dead-letters/replay".into(),
            "{}".into(),
        ),
        (
            "POST",
            "/registry/subjects/s-value/versions".into(),
            schema.clone(),
        ),
        ("POST", "/registry/subjects/s-value".into(), schema.clone()),
        ("DELETE", "/registry/subjects/s-value".into(), String::new()),
        (
            "DELETE",
            "/registry/subjects/s-value/versions/1".into(),
            String::new(),
        ),
        (
            "POST",
            "/registry/compatibility/subjects/s-value/versions/latest".into(),
            schema.clone(),
        ),
        (
            "PUT",
            "/registry/config".into(),
            json!({"compatibility": "FULL"}).to_string(),
        ),
        (
            "PUT",
            "/registry/config/s-value".into(),
            json!({"compatibility": "FULL"}).to_string(),
        ),
        ("DELETE", "/registry/config/s-value".into(), String::new()),
    ];
    for (method, path, body) in &writes {
        let url = format!("{}{path}", host.url);
        let m: reqwest::Method = method.parse()?;
        let none = host
            .http
            .request(m.clone(), &url)
            .body(body.clone())
            .send()
            .await?;
        ensure!(
            none.status() == 401,
            "{method} {path} without a token: {}",
            none.status()
        );
        ensure!(
            none.headers().contains_key("www-authenticate"),
            "{method} {path}: WWW-Authenticate"
        );
        let wrong = host
            .http
            .request(m.clone(), &url)
            .bearer_auth("not-it")
            .body(body.clone())
            .send()
            .await?;
        ensure!(
            wrong.status() == 403,
            "{method} {path} with a wrong token: {}",
            wrong.status()
        );
        let right = host
            .http
            .request(m, &url)
            .bearer_auth(TOKEN)
            .body(body.clone())
            .send()
            .await?;
        ensure!(
            right.status() != 401 && right.status() != 403,
            "{method} {path} with the token: {}",
            right.status()
        );
    }
    // Confluent's clients send the token as Basic auth's password.
    let basic = host
        .http
        .post(format!("{}/registry/subjects/b-value/versions", host.url))
        .basic_auth("any-user", Some(TOKEN))
        .body(schema)
        .send()
        .await?;
    ensure!(basic.status() == 200, "basic auth: {}", basic.status());
    // Reads are open unless protect_reads is set.
    for path in [
        "/v1/pipelines",
        "/async-process/latest",
        "/registry/subjects",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let (status, body) = host.get(path).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_producer_rate_limit_and_sse_caps_hold() -> Result<()> {
    let host = Host::start(&config()?).await?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let r = host
            .http
            .post(format!(
                "{}/v1/topics/async-process-execution/records",
                host.url
            ))
            .bearer_auth(TOKEN)
            .body(json!({ "value": execution(&format!("r{i}"), "k", i, "STARTED") }).to_string())
            .send()
            .await?;
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(r.status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    ensure!(
        (5..=7).contains(&ok) && limited >= 5,
        "burst of 5 at 2/s: {statuses:?}"
    );
    ensure!(retry_after.is_some_and(|s| s >= 1), "Retry-After on 429");
    // After waiting as told, the caller may produce again.
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
    let again = host
        .http
        .post(format!(
            "{}/v1/topics/async-process-execution/records",
            host.url
        ))
        .bearer_auth(TOKEN)
        .body(json!({ "value": execution("late", "k", 99, "DONE") }).to_string())
        .send()
        .await?;
    ensure!(
        again.status() == 200,
        "after Retry-After: {}",
        again.status()
    );

    // Two SSE connections per address; the third is refused until one closes.
    let a = host.sse("/v1/pipelines/async-process/events", None).await?;
    let _b = host.sse("/async-process/sse/k", None).await?;
    let third = host
        .http
        .get(format!("{}/v1/pipelines/async-process/events", host.url))
        .send()
        .await?;
    ensure!(
        third.status() == 429,
        "third SSE connection: {}",
        third.status()
    );
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match host.sse("/v1/pipelines/async-process/events", None).await {
            Ok(_) => break,
            Err(e) => {
                ensure!(
                    std::time::Instant::now() < deadline,
                    "slot never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

//! The token service against the real Debian `docker-registry` and the
//! real `docker` CLI: logins, pushes and pulls by role, anonymous pulls of
//! public projects, notifications into the index, and tokens the registry
//! must refuse.

mod common;

use std::time::{Duration, Instant};

use common::{DockerCli, ISSUER, NOTIFY_SECRET, PASSWORD, SERVICE, Stack, basic, http};
use kisara_registry::{Access, Action, Issuer, KeyRing, KidFormat, Scope, TokenService};

async fn stack() -> Stack {
    Stack::start(|store, issuer, auth| {
        (
            TokenService::new(issuer.clone(), SERVICE, auth, store.clone()),
            axum::Router::new(),
        )
    })
    .await
}

async fn busybox() -> String {
    let runtime = kisara_docker::testing::connect_default().await;
    kisara_docker::testing::test_image(&runtime)
        .await
        .to_string()
}

async fn wait_for_index(stack: &Stack, repository: &str, tag: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(
            "GET",
            &format!("{}/admin/images?repository={repository}", stack.token_url()),
            &[("authorization", &basic("root", PASSWORD))],
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let images: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(found) = images.as_array().unwrap().iter().find(|i| i["tag"] == tag) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{repository}:{tag} never reached the index: {body}\n{}",
            stack.registry_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_pushes_and_pulls_by_role_through_the_token_service() {
    let image = busybox().await;
    let stack = stack().await;
    let registry = stack.registry_addr.to_string();
    let alice = DockerCli::new();

    let out = alice
        .run(
            &[
                "login",
                "--username",
                "alice",
                "--password-stdin",
                &registry,
            ],
            Some("wrong password"),
        )
        .await;
    assert!(!out.ok && out.text.contains("unauthorized"), "{}", out.text);
    let out = alice.login(&registry, "alice").await;
    assert!(out.ok, "docker login as a developer: {}", out.text);

    // A developer pushes and pulls in its project.
    let ctf_x = format!("{}:1", stack.image("ctf/x"));
    alice.tag(&image, &ctf_x).await;
    let out = alice.run(&["push", &ctf_x], None).await;
    assert!(
        out.ok,
        "push as developer: {}\n{}",
        out.text,
        stack.registry_log()
    );
    let indexed = wait_for_index(&stack, "ctf/x", "1").await;
    assert_eq!(indexed["actor"], "alice", "{indexed}");
    assert!(indexed["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(indexed["size"].as_u64().unwrap() > 0);
    let out = alice.run(&["rmi", &ctf_x], None).await;
    assert!(out.ok, "{}", out.text);
    let out = alice.run(&["pull", &ctf_x], None).await;
    assert!(out.ok, "pull as developer: {}", out.text);
    alice.remember(&ctf_x);

    // A guest pulls but cannot push.
    let gus = DockerCli::new();
    assert!(gus.login(&registry, "gus").await.ok);
    let ctf_y = format!("{}:1", stack.image("ctf/y"));
    gus.tag(&image, &ctf_y).await;
    let out = gus.run(&["push", &ctf_y], None).await;
    assert!(
        !out.ok && out.text.contains("denied"),
        "guest push: {}",
        out.text
    );
    let out = gus.run(&["pull", &ctf_x], None).await;
    assert!(out.ok, "pull as guest: {}", out.text);

    // Anonymous: public projects only.
    let dora = DockerCli::new();
    assert!(dora.login(&registry, "dora").await.ok);
    let pub_x = format!("{}:1", stack.image("pub/x"));
    dora.tag(&image, &pub_x).await;
    let out = dora.run(&["push", &pub_x], None).await;
    assert!(out.ok, "push as project admin: {}", out.text);
    // dora is no member of ctf: the token grants nothing there.
    let out = dora.run(&["push", &ctf_y], None).await;
    assert!(!out.ok && out.text.contains("denied"), "{}", out.text);
    let anonymous = DockerCli::new();
    let out = anonymous.run(&["rmi", &pub_x], None).await;
    assert!(out.ok, "{}", out.text);
    let out = anonymous.run(&["pull", &pub_x], None).await;
    assert!(out.ok, "anonymous pull of a public project: {}", out.text);
    anonymous.remember(&pub_x);
    let out = anonymous.run(&["rmi", &ctf_x], None).await;
    assert!(out.ok, "{}", out.text);
    let out = anonymous.run(&["pull", &ctf_x], None).await;
    assert!(
        !out.ok && (out.text.contains("denied") || out.text.contains("unauthorized")),
        "anonymous pull of a private project: {}",
        out.text
    );

    stack.stop().await;
}

/// A manifest request with `token` as the bearer.
async fn manifest_with(stack: &Stack, token: &str) -> (u16, String) {
    http(
        "GET",
        &format!("{}/v2/ctf/x/manifests/1", stack.registry_url()),
        &[
            ("authorization", &format!("Bearer {token}")),
            (
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
        ],
        "",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_refuses_foreign_and_expired_tokens() {
    let image = busybox().await;
    let stack = stack().await;
    let cli = DockerCli::new();
    assert!(
        cli.login(&stack.registry_addr.to_string(), "alice")
            .await
            .ok
    );
    let ctf_x = format!("{}:1", stack.image("ctf/x"));
    cli.tag(&image, &ctf_x).await;
    let out = cli.run(&["push", &ctf_x], None).await;
    assert!(out.ok, "{}", out.text);

    let scope = Scope::parse("repository:ctf/x:pull").unwrap();
    let access = [Access::new(&scope.resource, vec![Action::Pull])];
    let good = stack.issuer.issue("alice", SERVICE, &access).unwrap();
    let (status, body) = manifest_with(&stack, &good.token).await;
    assert_eq!(status, 200, "a good token: {body}");

    let expired = stack
        .issuer
        .issue_at(
            kisara_registry::token::unix_now() - 3600,
            Duration::from_secs(60),
            "alice",
            SERVICE,
            &access,
        )
        .unwrap();
    let (status, body) = manifest_with(&stack, &expired.token).await;
    assert_eq!(status, 401, "an expired token: {body}");

    let other_dir = tempfile::tempdir().unwrap();
    let foreign_keys = KeyRing::open(other_dir.path(), "intruder", KidFormat::Libtrust).unwrap();
    let foreign = Issuer::new(
        std::sync::Arc::new(std::sync::RwLock::new(foreign_keys)),
        ISSUER,
        Duration::from_secs(300),
    )
    .issue("alice", SERVICE, &access)
    .unwrap();
    let (status, body) = manifest_with(&stack, &foreign.token).await;
    assert_eq!(status, 401, "a token of a foreign key: {body}");

    let wrong_audience = stack
        .issuer
        .issue("alice", "another-registry", &access)
        .unwrap();
    let (status, _) = manifest_with(&stack, &wrong_audience.token).await;
    assert_eq!(status, 401, "a token for another service");

    // A token without pull (what a stranger gets) is refused too.
    let nothing = stack
        .issuer
        .issue("mallory", SERVICE, &[Access::new(&scope.resource, vec![])])
        .unwrap();
    let (status, _) = manifest_with(&stack, &nothing.token).await;
    assert_eq!(status, 401);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_endpoint_refuses_bad_input_and_grants_by_role() {
    let stack = stack().await;
    let url = stack.token_url();
    let alice = basic("alice", PASSWORD);
    let get = |query: String, auth: Option<String>| {
        let url = url.clone();
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("authorization", a.as_str())],
                None => vec![],
            };
            http("GET", &format!("{url}/token?{query}"), &headers, "")
                .await
                .unwrap()
        }
    };
    let claims = |body: &str| {
        use base64::Engine;
        let token: serde_json::Value = serde_json::from_str(body).unwrap();
        let payload = token["token"].as_str().unwrap().split('.').nth(1).unwrap();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&decoded).unwrap()
    };

    let (status, body) = get(
        format!(
            "service={SERVICE}&scope=repository:ctf/x:pull,push,delete&scope=registry:catalog:*"
        ),
        Some(alice.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(&body)["access"],
        serde_json::json!([
            {"type": "repository", "name": "ctf/x", "actions": ["pull", "push"]},
            {"type": "registry", "name": "catalog", "actions": []},
        ])
    );
    // The intersection table per role.
    for (user, repository, expected) in [
        ("gus", "ctf/x", serde_json::json!(["pull"])),
        (
            "dora",
            "pub/x",
            serde_json::json!(["pull", "push", "delete"]),
        ),
        ("dora", "ctf/x", serde_json::json!([])),
        ("alice", "pub/x", serde_json::json!(["pull"])),
        (
            "root",
            "ctf/x",
            serde_json::json!(["pull", "push", "delete"]),
        ),
        ("alice", "nosuchproject/x", serde_json::json!([])),
    ] {
        let (status, body) = get(
            format!("service={SERVICE}&scope=repository:{repository}:pull,push,delete"),
            Some(basic(user, PASSWORD)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            claims(&body)["access"][0]["actions"],
            expected,
            "{user} on {repository}"
        );
    }
    // Anonymous: pull of public projects only.
    let (status, body) = get(
        format!("service={SERVICE}&scope=repository:pub/x:pull,push&scope=repository:ctf/x:pull"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let anonymous = claims(&body);
    assert_eq!(anonymous["sub"], "");
    assert_eq!(
        anonymous["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    assert_eq!(anonymous["access"][1]["actions"], serde_json::json!([]));

    // Bad input names what is wrong.
    for (query, expect) in [
        (
            format!("service={SERVICE}&scope=repository:CTF/x:pull"),
            "must start and end",
        ),
        (
            format!("service={SERVICE}&scope=repository:ctf/x:steal"),
            "unknown action",
        ),
        (
            format!("service={SERVICE}&scope=nonsense"),
            "is not `type:name:action",
        ),
        ("service=elsewhere".to_owned(), "unknown service"),
        (format!("service={SERVICE}&scope=%zz"), "bad percent escape"),
        (
            format!(
                "service={SERVICE}{}",
                "&scope=repository:ctf/x:pull".repeat(33)
            ),
            "more than 32 scopes",
        ),
        (
            format!(
                "service={SERVICE}&scope=repository:{}:pull",
                "a/".repeat(5000)
            ),
            "byte limit",
        ),
    ] {
        let (status, body) = get(query.clone(), Some(alice.clone())).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expect), "{query}: {body}");
    }
    let (status, body) = get(format!("service={SERVICE}"), Some(basic("alice", "wrong"))).await;
    assert_eq!(status, 401, "{body}");

    // OAuth2 form: password grant with a refresh token, then a refresh.
    let form = format!(
        "grant_type=password&username=alice&password={PASSWORD}&service={SERVICE}&client_id=test&access_type=offline&scope=repository:ctf/x:pull+repository:ctf/y:push"
    );
    let (status, body) = http(
        "POST",
        &format!("{url}/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["token"], answer["access_token"]);
    assert!(answer["expires_in"].as_u64().unwrap() >= 60);
    assert_eq!(
        claims(&body)["access"][1]["actions"],
        serde_json::json!(["push"])
    );
    let refresh = answer["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = http(
        "POST",
        &format!("{url}/token"),
        &[],
        &format!("grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&client_id=test&scope=repository:ctf/x:pull"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(&body)["sub"], "alice");
    for (form, expect) in [
        (
            format!("grant_type=refresh_token&refresh_token=forged&service={SERVICE}"),
            "unknown or expired",
        ),
        (
            format!("grant_type=magic&service={SERVICE}"),
            "unsupported grant_type",
        ),
        (
            format!("grant_type=password&username=alice&service={SERVICE}"),
            "no \\\"password\\\" field",
        ),
    ] {
        let (status, body) = http("POST", &format!("{url}/token"), &[], &form)
            .await
            .unwrap();
        assert!(status == 400 || status == 401, "{form}: {status} {body}");
        assert!(body.contains(expect), "{form}: {body}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_need_the_secret_valid_json_and_are_deduplicated() {
    let stack = stack().await;
    let url = format!("{}/notifications", stack.token_url());
    let auth = format!("Bearer {NOTIFY_SECRET}");
    let envelope = r#"{"events":[{"id":"ev-1","action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":527,"digest":"sha256:abc","repository":"ctf/z","tag":"7"},"actor":{"name":"alice"}},
        {"id":"ev-2","action":"push","target":{"mediaType":"application/octet-stream","size":9,"digest":"sha256:layer","repository":"ctf/z"}}]}"#;
    let (status, body) = http("POST", &url, &[("authorization", "Bearer wrong")], envelope)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = http("POST", &url, &[], envelope).await.unwrap();
    assert_eq!(status, 401);
    let (status, body) = http(
        "POST",
        &url,
        &[("authorization", &auth)],
        "{\"events\": [{}]}",
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("events[0]") && body.contains("id"), "{body}");
    let (status, body) = http("POST", &url, &[("authorization", &auth)], "not json")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = http("POST", &url, &[("authorization", &auth)], envelope)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body, r#"{"duplicates":0,"recorded":1}"#,
        "layers are not images"
    );
    let (_, body) = http("POST", &url, &[("authorization", &auth)], envelope)
        .await
        .unwrap();
    assert_eq!(body, r#"{"duplicates":2,"recorded":0}"#);
    let images = stack.store.images(Some("ctf/z".to_owned())).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!((images[0].tag.as_str(), images[0].size), ("7", 527));
    let delete = r#"{"events":[{"id":"ev-3","action":"delete","target":{"digest":"sha256:abc","repository":"ctf/z"}}]}"#;
    let (status, _) = http("POST", &url, &[("authorization", &auth)], delete)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        stack
            .store
            .images(Some("ctf/z".to_owned()))
            .await
            .unwrap()
            .is_empty()
    );
    stack.stop().await;
}

use crate::helpers::TestApp;

#[tokio::test]
async fn healthz_says_ok_and_the_authenticated_health_gives_the_detail() {
    let app = TestApp::spawn("").await;
    let response = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));

    let health = app.get_json("/api/v1/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"]["status"], "ok", "{health}");
    assert_eq!(health["docker"]["status"], "ok", "{health}");
    assert_eq!(
        health["docker"]["address"], "unix:///var/run/docker.sock",
        "{health}"
    );
    assert!(health["docker"]["api_version"]
        .as_str()
        .unwrap()
        .starts_with("1."));
    assert_eq!(health["packer"]["status"], "ok", "{health}");
    assert!(
        health["packer"]["version"]
            .as_str()
            .unwrap()
            .starts_with("Packer v"),
        "{health}"
    );
    assert_eq!(health["apt"]["status"], "ok", "{health}");
    assert_eq!(
        health["apt"]["dir"],
        app.data_dir().join("apt").to_str().unwrap(),
        "{health}"
    );
    assert_eq!(health["aws"], serde_json::json!([]));
    app.stop().await;
}

#[tokio::test]
async fn api_requires_a_valid_bearer_token() {
    let app = TestApp::spawn("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///nowhere\"\n").await;
    let url = format!("{}/api/v1/projects/hello/builds", app.address);
    let anonymous = app.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("slw_not_a_token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let admin = app.get("/api/v1/projects/hello/builds").await;
    assert_eq!(admin.status(), 200);

    // A token made through the API works too, and only its hash is stored.
    let created: serde_json::Value = app
        .http
        .post(format!("{}/api/v1/tokens", app.address))
        .bearer_auth(&app.token)
        .json(&serde_json::json!({"name": "ci", "scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap();
    let with_new = app.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(with_new.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn unknown_project_names_the_ones_that_exist() {
    let app = TestApp::spawn("[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"file:///nowhere\"\n").await;
    let response = app.get("/api/v1/projects/nope/builds").await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "no project named `nope`; projects: hello");
    app.stop().await;
}

//! The pipeline contract: write-time validation (every problem, named by field) and template rendering.

use orrery::pipeline::{
    contains_template, eval_condition, is_concrete_topic, render, validate_payload, whole_template,
    FieldError, Payload, KNOWN_TOOLS, MAX_STEPS,
};
use serde_json::{json, Value};

fn errors_of(raw: Value) -> Vec<FieldError> {
    match validate_payload(&raw) {
        Ok(payload) => panic!("expected validation errors, got {payload:?}"),
        Err(errors) => errors,
    }
}

fn fields_of(raw: Value) -> Vec<String> {
    errors_of(raw).into_iter().map(|e| e.field).collect()
}

/// The single error a payload with one step produces.
fn step_error(step: Value) -> FieldError {
    let errors = errors_of(json!({ "pipeline": [step] }));
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:?}"
    );
    errors.into_iter().next().unwrap()
}

fn valid(raw: Value) -> Payload {
    validate_payload(&raw).unwrap_or_else(|errors| panic!("expected valid, got {errors:?}"))
}

fn ctx() -> Value {
    json!({
        "params": {"n": 5, "name": "ada", "cfg": {"a": [1, 2]}, "list": [1, 2, 3],
                   "flag": true, "empty": "", "zero": 0},
        "steps": {"fetch": {"status": 200, "body": {"items": [{"id": 1}, {"id": 2}]}}},
        "event": {"id": "e1", "topic": "user.signup", "payload": {"user": "bob"},
                  "published_at": "2024-03-10T08:00:00Z"},
        "task": {"id": "t1", "title": "Report"},
        "run": {"id": "r1", "attempt": 1, "scheduled_for": "2024-03-10T09:00:00Z",
                "idempotency_key": "r1"},
        "now": "2024-03-10T09:00:01Z"
    })
}

fn rendered(template: Value) -> Value {
    render(&template, &ctx()).unwrap_or_else(|e| panic!("render failed: {e}"))
}

// --- validation: accepted payloads ------------------------------------------------------------------

#[test]
fn a_complete_payload_is_accepted_and_typed() {
    let payload = valid(json!({
        "params": {"base": "https://api.example.com"},
        "pipeline": [
            {"id": "fetch", "uses": "http.request", "save_as": "report", "timeout_seconds": 10,
             "with": {"url": "${params.base}/report", "method": "post",
                      "headers": {"Authorization": "Bearer ${params.token}"}, "json": {"a": 1},
                      "timeout_seconds": 5}},
            {"id": "announce", "uses": "events.publish", "if": "steps.report.status == `200`",
             "with": {"topic": "reports.ready", "payload": {"body": "${steps.report.body}"}}},
            {"id": "pause", "uses": "sleep", "with": {"seconds": 1.5}},
            {"id": "done", "uses": "noop"}
        ]
    }));
    assert_eq!(payload.pipeline.len(), 4);
    assert_eq!(payload.pipeline[0].result_name(), "report");
    assert_eq!(payload.pipeline[0].timeout_seconds, Some(10));
    assert_eq!(
        payload.pipeline[1].r#if.as_deref(),
        Some("steps.report.status == `200`")
    );
    assert_eq!(payload.pipeline[3].with, json!({}));
    assert_eq!(payload.params["base"], "https://api.example.com");
}

#[test]
fn params_are_optional_and_an_empty_pipeline_is_allowed() {
    let payload = valid(json!({"pipeline": []}));
    assert!(payload.params.is_empty());
    assert!(payload.pipeline.is_empty());
}

#[test]
fn null_optional_step_fields_count_as_absent() {
    let payload = valid(json!({"pipeline": [
        {"id": "a", "uses": "noop", "with": null, "save_as": null, "if": null, "timeout_seconds": null}
    ]}));
    assert_eq!(payload.pipeline[0].with, json!({}));
    assert_eq!(payload.pipeline[0].save_as, None);
}

#[test]
fn payloads_round_trip_through_serde() {
    let payload = valid(json!({"pipeline": [
        {"id": "a", "uses": "noop", "if": "params.x", "with": {"k": "${params.x}"}}
    ]}));
    let stored = serde_json::to_value(&payload).unwrap();
    assert_eq!(stored["pipeline"][0]["if"], "params.x");
    let loaded: Payload = serde_json::from_value(stored).unwrap();
    assert_eq!(loaded, payload);
}

#[test]
fn every_known_tool_is_accepted_with_minimal_arguments() {
    let minimal = |tool: &str| match tool {
        "http.request" => json!({"url": "http://localhost:8080/"}),
        "events.publish" => json!({"topic": "a.b", "payload": null}),
        "sleep" => json!({"seconds": 0}),
        "shell" => json!({"program": "/bin/true"}),
        "external" => json!({"queue": "images"}),
        _ => json!({}),
    };
    for tool in KNOWN_TOOLS {
        valid(json!({"pipeline": [{"id": "s", "uses": tool, "with": minimal(tool)}]}));
    }
}

#[test]
fn if_accepts_a_whole_template_as_well_as_a_bare_expression() {
    valid(json!({"pipeline": [{"id": "a", "uses": "noop", "if": "${params.enabled}"}]}));
    valid(json!({"pipeline": [{"id": "a", "uses": "noop", "if": "params.enabled"}]}));
}

// --- validation: payload shape ---------------------------------------------------------------------

#[test]
fn a_payload_must_be_an_object() {
    assert_eq!(
        errors_of(json!([1])),
        vec![FieldError {
            field: "payload".into(),
            message: "must be an object".into()
        }]
    );
}

#[test]
fn unknown_payload_keys_are_rejected() {
    assert_eq!(
        fields_of(json!({"pipeline": [], "steps": []})),
        vec!["payload.steps"]
    );
}

#[test]
fn pipeline_defaults_to_no_steps_and_must_be_an_array() {
    let empty = validate_payload(&json!({})).expect("an empty payload is the documented default");
    assert!(empty.pipeline.is_empty() && empty.params.is_empty());
    assert!(validate_payload(&json!({"pipeline": null})).is_ok());
    assert_eq!(fields_of(json!({"pipeline": {}})), vec!["payload.pipeline"]);
}

#[test]
fn params_must_be_an_object() {
    assert_eq!(
        fields_of(json!({"params": [1], "pipeline": []})),
        vec!["payload.params"]
    );
}

#[test]
fn at_most_fifty_steps() {
    let steps: Vec<Value> = (0..=MAX_STEPS)
        .map(|i| json!({"id": format!("s{i}"), "uses": "noop"}))
        .collect();
    assert_eq!(
        fields_of(json!({ "pipeline": steps })),
        vec!["payload.pipeline"]
    );
    valid(json!({ "pipeline": steps[..MAX_STEPS] }));
}

#[test]
fn a_step_must_be_an_object() {
    assert_eq!(
        fields_of(json!({"pipeline": ["noop"]})),
        vec!["payload.pipeline[0]"]
    );
}

#[test]
fn unknown_step_keys_are_rejected() {
    let error = step_error(json!({"id": "a", "uses": "noop", "retries": 3}));
    assert_eq!(error.field, "payload.pipeline[0].retries");
}

#[test]
fn every_problem_is_reported_with_its_own_path() {
    let fields = fields_of(json!({"pipeline": [
        {"id": "ok", "uses": "noop"},
        {"id": "bad id!", "uses": "ssh"},
        {"uses": "noop", "timeout_seconds": 0},
        {"id": "x", "uses": "noop", "with": {"a": "${params.}"}}
    ]}));
    assert_eq!(
        fields,
        vec![
            "payload.pipeline[1].id",
            "payload.pipeline[1].uses",
            "payload.pipeline[2].id",
            "payload.pipeline[2].timeout_seconds",
            "payload.pipeline[3].with.a",
        ]
    );
}

// --- validation: step fields -----------------------------------------------------------------------

#[test]
fn step_ids_are_required_well_formed_and_unique() {
    assert_eq!(
        step_error(json!({"uses": "noop"})).field,
        "payload.pipeline[0].id"
    );
    assert_eq!(
        step_error(json!({"id": 7, "uses": "noop"})).field,
        "payload.pipeline[0].id"
    );
    assert_eq!(
        step_error(json!({"id": "", "uses": "noop"})).field,
        "payload.pipeline[0].id"
    );
    assert_eq!(
        step_error(json!({"id": "a".repeat(65), "uses": "noop"})).field,
        "payload.pipeline[0].id"
    );
    valid(json!({"pipeline": [{"id": "a".repeat(64), "uses": "noop"}]}));
    valid(json!({"pipeline": [{"id": "fetch-1_B", "uses": "noop"}]}));

    let errors = errors_of(json!({"pipeline": [
        {"id": "a", "uses": "noop"}, {"id": "a", "uses": "noop"}
    ]}));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "payload.pipeline[1].id");
    assert!(
        errors[0].message.contains("payload.pipeline[0]"),
        "{}",
        errors[0].message
    );
}

#[test]
fn uses_must_name_a_known_tool() {
    let error = step_error(json!({"id": "a", "uses": "shell.exec"}));
    assert_eq!(error.field, "payload.pipeline[0].uses");
    assert!(error.message.contains("shell.exec"));
    assert!(error.message.contains("http.request"));
    assert_eq!(
        step_error(json!({"id": "a"})).field,
        "payload.pipeline[0].uses"
    );
}

#[test]
fn with_must_be_an_object() {
    assert_eq!(
        step_error(json!({"id": "a", "uses": "noop", "with": [1]})).field,
        "payload.pipeline[0].with"
    );
}

#[test]
fn save_as_must_be_an_identifier() {
    for bad in ["", "1abc", "has-dash", "has space"] {
        assert_eq!(
            step_error(json!({"id": "a", "uses": "noop", "save_as": bad})).field,
            "payload.pipeline[0].save_as",
            "{bad:?}"
        );
    }
    valid(json!({"pipeline": [{"id": "a", "uses": "noop", "save_as": "_result2"}]}));
}

#[test]
fn result_names_are_unique() {
    let errors = errors_of(json!({"pipeline": [
        {"id": "a", "uses": "noop", "save_as": "out"},
        {"id": "b", "uses": "noop", "save_as": "out"}
    ]}));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "payload.pipeline[1].save_as");

    // A save_as may not take the name another step's result already lives under.
    let errors = errors_of(json!({"pipeline": [
        {"id": "a", "uses": "noop", "save_as": "b"},
        {"id": "b", "uses": "noop"}
    ]}));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "payload.pipeline[1].id");
}

#[test]
fn conditions_must_compile() {
    for bad in ["params.(", "", "${}", "bogus_fn(params.x)", "nothing.here"] {
        assert_eq!(
            step_error(json!({"id": "a", "uses": "noop", "if": bad})).field,
            "payload.pipeline[0].if",
            "{bad:?}"
        );
    }
    assert_eq!(
        step_error(json!({"id": "a", "uses": "noop", "if": true})).field,
        "payload.pipeline[0].if"
    );
}

#[test]
fn step_timeouts_are_between_one_second_and_a_day() {
    for bad in [json!(0), json!(86_401), json!(1.5), json!("10"), json!(-1)] {
        assert_eq!(
            step_error(json!({"id": "a", "uses": "noop", "timeout_seconds": bad})).field,
            "payload.pipeline[0].timeout_seconds"
        );
    }
    valid(json!({"pipeline": [{"id": "a", "uses": "noop", "timeout_seconds": 86_400}]}));
}

// --- validation: templates -------------------------------------------------------------------------

#[test]
fn templates_anywhere_in_with_must_compile_and_are_reported_at_their_path() {
    let error = step_error(json!({"id": "a", "uses": "noop",
        "with": {"outer": {"list": [1, "ok ${params.x}", "bad ${params.[}"]}}}));
    assert_eq!(error.field, "payload.pipeline[0].with.outer.list[2]");
    assert!(error.message.contains("params.["), "{}", error.message);
}

#[test]
fn template_problems_are_caught_at_write_time() {
    for bad in [
        "${params.x",            // unterminated
        "${}",                   // empty
        "${unknown_fn(params)}", // unknown function
        "${parms.x}",            // unknown root name
        "${params.list[::0]}",   // zero slice step
    ] {
        let error = step_error(json!({"id": "a", "uses": "noop", "with": {"v": bad}}));
        assert_eq!(error.field, "payload.pipeline[0].with.v", "{bad:?}");
    }
}

#[test]
fn keys_that_are_not_plain_names_are_quoted_in_paths() {
    let error = step_error(json!({"id": "a", "uses": "noop", "with": {"a b": "${nope}"}}));
    assert_eq!(error.field, r#"payload.pipeline[0].with["a b"]"#);
}

#[test]
fn names_inside_projections_and_functions_are_not_mistaken_for_roots() {
    valid(json!({"pipeline": [{"id": "a", "uses": "noop", "with": {
        "ids": "${steps.fetch.body.items[?id > `1`].id}",
        "sorted": "${sort_by(steps.fetch.body.items, &id)[0].id}",
        "hash": "${ {first: params.a, count: length(params.list)} }",
        "whole": "${@}",
        "literal": "${`{\"k\": 1}`}",
        "escaped": "$${not_a_template}"
    }}]}));
}

// --- validation: tool arguments --------------------------------------------------------------------

fn http(with: Value) -> FieldError {
    step_error(json!({"id": "h", "uses": "http.request", "with": with}))
}

#[test]
fn http_request_needs_an_http_url() {
    assert_eq!(http(json!({})).field, "payload.pipeline[0].with.url");
    assert_eq!(
        http(json!({"url": 5})).field,
        "payload.pipeline[0].with.url"
    );
    assert_eq!(
        http(json!({"url": "ftp://x"})).field,
        "payload.pipeline[0].with.url"
    );
    assert_eq!(
        http(json!({"url": "https://"})).field,
        "payload.pipeline[0].with.url"
    );
    assert_eq!(
        http(json!({"url": "not a url"})).field,
        "payload.pipeline[0].with.url"
    );
    // Templated URLs are checked when rendered.
    valid(
        json!({"pipeline": [{"id": "h", "uses": "http.request", "with": {"url": "${params.url}"}}]}),
    );
}

#[test]
fn http_request_checks_method_headers_body_and_timeout() {
    let url = "https://example.com/x";
    assert_eq!(
        http(json!({"url": url, "method": "FETCH"})).field,
        "payload.pipeline[0].with.method"
    );
    assert_eq!(
        http(json!({"url": url, "headers": ["X-A: b"]})).field,
        "payload.pipeline[0].with.headers"
    );
    assert_eq!(
        http(json!({"url": url, "headers": {"X-Count": 3}})).field,
        "payload.pipeline[0].with.headers.X-Count"
    );
    assert_eq!(
        http(json!({"url": url, "headers": {"Bad Name": "v"}})).field,
        r#"payload.pipeline[0].with.headers["Bad Name"]"#
    );
    assert_eq!(
        http(json!({"url": url, "json": {}, "body": "x"})).field,
        "payload.pipeline[0].with.body"
    );
    assert_eq!(
        http(json!({"url": url, "body": {"a": 1}})).field,
        "payload.pipeline[0].with.body"
    );
    assert_eq!(
        http(json!({"url": url, "timeout_seconds": 0})).field,
        "payload.pipeline[0].with.timeout_seconds"
    );
    assert_eq!(
        http(json!({"url": url, "query": {"a": 1}})).field,
        "payload.pipeline[0].with.query"
    );
    valid(
        json!({"pipeline": [{"id": "h", "uses": "http.request", "with": {
            "url": url, "method": "delete", "headers": "${params.headers}",
            "timeout_seconds": "${params.timeout}"
        }}]}),
    );
}

#[test]
fn events_publish_needs_a_concrete_topic_and_a_payload() {
    let publish =
        |with: Value| step_error(json!({"id": "p", "uses": "events.publish", "with": with}));
    assert_eq!(
        publish(json!({"payload": 1})).field,
        "payload.pipeline[0].with.topic"
    );
    assert_eq!(
        publish(json!({"topic": "email.*", "payload": 1})).field,
        "payload.pipeline[0].with.topic"
    );
    assert_eq!(
        publish(json!({"topic": "a..b", "payload": 1})).field,
        "payload.pipeline[0].with.topic"
    );
    assert_eq!(
        publish(json!({"topic": "a.b"})).field,
        "payload.pipeline[0].with.payload"
    );
    valid(json!({"pipeline": [{"id": "p", "uses": "events.publish",
        "with": {"topic": "user.${params.kind}", "payload": {"u": "${params.u}"}}}]}));
}

#[test]
fn topics_follow_the_event_rules() {
    assert!(is_concrete_topic("user.signup"));
    assert!(is_concrete_topic("a-b_c.D9"));
    assert!(!is_concrete_topic(""));
    assert!(!is_concrete_topic("user.*"));
    assert!(!is_concrete_topic("user."));
    assert!(!is_concrete_topic(&"a".repeat(201)));
    assert!(is_concrete_topic(&"a".repeat(200)));
}

#[test]
fn sleep_needs_seconds_within_an_hour() {
    let sleep = |with: Value| step_error(json!({"id": "s", "uses": "sleep", "with": with}));
    assert_eq!(sleep(json!({})).field, "payload.pipeline[0].with.seconds");
    assert_eq!(
        sleep(json!({"seconds": 3601})).field,
        "payload.pipeline[0].with.seconds"
    );
    assert_eq!(
        sleep(json!({"seconds": -1})).field,
        "payload.pipeline[0].with.seconds"
    );
    assert_eq!(
        sleep(json!({"seconds": "5"})).field,
        "payload.pipeline[0].with.seconds"
    );
    valid(json!({"pipeline": [{"id": "s", "uses": "sleep", "with": {"seconds": "${params.n}"}}]}));
    valid(json!({"pipeline": [{"id": "s", "uses": "sleep", "with": {"seconds": 3600}}]}));
}

#[test]
fn noop_takes_anything() {
    valid(
        json!({"pipeline": [{"id": "n", "uses": "noop", "with": {"anything": [1, {"x": null}]}}]}),
    );
}

// --- rendering -------------------------------------------------------------------------------------

#[test]
fn a_whole_template_keeps_the_type_of_its_result() {
    assert_eq!(rendered(json!("${params.n}")), json!(5));
    assert_eq!(rendered(json!("${params.cfg}")), json!({"a": [1, 2]}));
    assert_eq!(rendered(json!("${params.list}")), json!([1, 2, 3]));
    assert_eq!(rendered(json!("${params.flag}")), json!(true));
    assert_eq!(rendered(json!("${params.name}")), json!("ada"));
    assert_eq!(rendered(json!("${ params.n }")), json!(5));
}

#[test]
fn a_missing_path_as_the_whole_value_is_null() {
    assert_eq!(rendered(json!("${params.nope}")), Value::Null);
    assert_eq!(
        rendered(json!("${event.payload.missing.deeper}")),
        Value::Null
    );
}

#[test]
fn templates_inside_longer_strings_are_stringified() {
    assert_eq!(
        rendered(json!(
            "n=${params.n} name=${params.name} flag=${params.flag}"
        )),
        json!("n=5 name=ada flag=true")
    );
    assert_eq!(
        rendered(json!("cfg=${params.cfg}")),
        json!(r#"cfg={"a":[1,2]}"#)
    );
    assert_eq!(
        rendered(json!("list=${params.list}")),
        json!("list=[1,2,3]")
    );
    assert_eq!(rendered(json!("[${params.empty}]")), json!("[]"));
}

#[test]
fn a_missing_path_inside_a_longer_string_is_an_error() {
    let error = render(&json!("hello ${params.nope}"), &ctx()).unwrap_err();
    assert!(error.message.contains("params.nope"), "{}", error.message);
}

#[test]
fn rendering_walks_objects_and_arrays_but_not_keys() {
    let out = rendered(json!({
        "${params.name}": "${params.name}",
        "nested": {"list": ["${params.n}", {"deep": "id-${steps.fetch.body.items[1].id}"}]},
        "untouched": [1, true, null, 2.5]
    }));
    assert_eq!(
        out,
        json!({
            "${params.name}": "ada",
            "nested": {"list": [5, {"deep": "id-2"}]},
            "untouched": [1, true, null, 2.5]
        })
    );
}

#[test]
fn every_context_root_is_reachable() {
    assert_eq!(
        rendered(json!([
            "${event.payload.user}",
            "${task.title}",
            "${run.attempt}",
            "${now}",
            "${steps.fetch.status}"
        ])),
        json!(["bob", "Report", 1, "2024-03-10T09:00:01Z", 200])
    );
}

#[test]
fn jmespath_functions_and_projections_work() {
    assert_eq!(rendered(json!("${length(params.list)}")), json!(3));
    assert_eq!(rendered(json!("${sum(params.list)}")), json!(6));
    assert_eq!(
        rendered(json!("${steps.fetch.body.items[].id}")),
        json!([1, 2])
    );
    assert_eq!(rendered(json!("${ {n: params.n} }")), json!({"n": 5}));
    assert_eq!(rendered(json!("${join(',', ['a', 'b'])}")), json!("a,b"));
}

#[test]
fn dollar_dollar_brace_escapes_a_literal_template() {
    assert_eq!(rendered(json!("$${params.n}")), json!("${params.n}"));
    assert_eq!(
        rendered(json!("cost: $5 and $${x} and ${params.n}")),
        json!("cost: $5 and ${x} and 5")
    );
    assert!(!contains_template("$${x}"));
    assert!(contains_template("a ${x}"));
    assert_eq!(whole_template("${params.n}"), Some("params.n"));
    assert_eq!(whole_template("x${params.n}"), None);
}

#[test]
fn malformed_templates_fail_to_render() {
    assert!(render(&json!("${params.n"), &ctx()).is_err());
    assert!(render(&json!("${params.[}"), &ctx()).is_err());
    assert!(render(&json!("${abs('x')}"), &ctx()).is_err());
}

#[test]
fn strings_without_templates_are_unchanged() {
    assert_eq!(rendered(json!("plain $ text {}")), json!("plain $ text {}"));
}

// --- conditions ------------------------------------------------------------------------------------

#[test]
fn conditions_use_jmespath_truthiness() {
    let c = ctx();
    assert!(eval_condition("params.flag", &c).unwrap());
    assert!(
        eval_condition("params.zero", &c).unwrap(),
        "0 is truthy in JMESPath"
    );
    assert!(eval_condition("params.list", &c).unwrap());
    assert!(!eval_condition("params.missing", &c).unwrap());
    assert!(!eval_condition("params.empty", &c).unwrap());
    assert!(!eval_condition("`[]`", &c).unwrap());
    assert!(!eval_condition("`{}`", &c).unwrap());
    assert!(!eval_condition("`false`", &c).unwrap());
}

#[test]
fn conditions_compare_and_accept_template_syntax() {
    let c = ctx();
    assert!(eval_condition("steps.fetch.status == `200`", &c).unwrap());
    assert!(eval_condition("${params.n > `3`}", &c).unwrap());
    assert!(!eval_condition("${event.payload.user == 'ada'}", &c).unwrap());
    assert!(eval_condition("length(steps.fetch.body.items) == `2` && params.flag", &c).unwrap());
}

#[test]
fn broken_conditions_are_errors() {
    assert!(eval_condition("params.(", &ctx()).is_err());
    assert!(eval_condition("", &ctx()).is_err());
}

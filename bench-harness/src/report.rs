//! What a run shows: the one-screen summary, the JSON results (every figure of the summary plus the
//! per-second timeline), and an SVG plot of the latency percentile distribution in the HDR style
//! (x: percentile on a 1/(1-p) scale, y: latency).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::client::Summary;
use crate::{RunArgs, Scenario};

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1e6,
    })
}

fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} samples)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}

pub fn finish(args: &RunArgs, s: &Summary) {
    println!(
        "== {} · {:?} · {} users · {:?}",
        args.label, args.scenario, args.users, args.mech
    );
    println!(
        "logins: {} online, {} failed, in {:.2} s = {:.0} logins/s",
        s.online,
        s.login_failures,
        s.login_secs,
        s.online as f64 / s.login_secs.max(1e-9)
    );
    println!("login latency: {}", line(&s.login));
    if let Some(cpu) = s.server_cpu_login_s {
        println!(
            "server CPU per login: {:.1} µs (harness: {:.1} µs)",
            cpu * 1e6 / s.online.max(1) as f64,
            s.harness_cpu_login_s * 1e6 / s.online.max(1) as f64
        );
        if let Some(db) = s.db_cpu_login_s {
            println!(
                "server+db CPU per login: {:.1} µs (db: {:.1} µs)",
                (cpu + db) * 1e6 / s.online.max(1) as f64,
                db * 1e6 / s.online.max(1) as f64
            );
        }
    }
    let offline = s.offline.as_ref().map(|o| offline_report(args, o));
    let mut rss_per_session = None;
    if let (Some(b), Some(a)) = (s.rss_before_kib, s.rss_after_kib) {
        let per = (a.saturating_sub(b)) as f64 / s.online.max(1) as f64;
        rss_per_session = Some(per);
        println!("server RSS: {b} KiB -> {a} KiB = {per:.2} KiB per idle session");
    }
    if args.scenario == Scenario::Mixed {
        println!(
            "churn: {} sessions dropped and logged in again ({} failed); login again latency: {}",
            s.relogins,
            s.relogin_failures,
            line(&s.relogin)
        );
    }
    let mut steps = Vec::new();
    let mut best_rate = None;
    for st in &s.steps {
        // A message answered with an error is accounted for, not lost.
        let lost = st.sent.saturating_sub(st.received + st.bounced);
        let cpu_per_msg = st.server_cpu_s.map(|c| c * 1e6 / st.received.max(1) as f64);
        let (what, sent) = if args.scenario == Scenario::Presence {
            ("presence updates", "deliveries expected")
        } else {
            ("chat", "sent")
        };
        println!(
            "{what} at {:.0}/s for {:.1} s: {sent} {}, received {}, bounced {}, lost {lost}; latency {}",
            st.rate,
            st.secs,
            st.sent,
            st.received,
            st.bounced,
            line(&st.latency)
        );
        if let Some(c) = cpu_per_msg {
            println!(
                "  server CPU per message{}: {c:.2} µs; harness CPU per message: {:.2} µs",
                if args.scenario == Scenario::Mixed {
                    " (the churn's logins included)"
                } else {
                    ""
                },
                st.harness_cpu_s * 1e6 / st.received.max(1) as f64
            );
        }
        let held = lost == 0
            && !st.latency.is_empty()
            && ms(st.latency.value_at_quantile(0.99)) <= args.p99_bound_ms;
        if held {
            best_rate = Some(st.rate);
        }
        steps.push(json!({
            "rate": st.rate,
            "secs": st.secs,
            "sent": st.sent,
            "received": st.received,
            "bounced": st.bounced,
            "lost": lost,
            "latency": percentiles(&st.latency),
            "server_cpu_us_per_message": cpu_per_msg,
            "harness_cpu_us_per_message": st.harness_cpu_s * 1e6 / st.received.max(1) as f64,
            "held_p99_bound": held,
            "timeline": st.timeline.iter().map(|(n, p99)| json!({"received": n, "p99_ms": ms(*p99)})).collect::<Vec<_>>(),
        }));
    }
    if args.find_max && args.scenario == Scenario::Chat {
        match best_rate {
            Some(r) => println!(
                "find-max: highest rate with p99 <= {} ms and nothing lost: {r:.0} msg/s",
                args.p99_bound_ms
            ),
            None => println!(
                "find-max: no rate held p99 <= {} ms with nothing lost",
                args.p99_bound_ms
            ),
        }
    }
    if let Some(path) = &args.json {
        let v = json!({
            "label": args.label,
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "users": args.users,
            "mech": format!("{:?}", args.mech),
            "threads": args.threads,
            "online": s.online,
            "login_failures": s.login_failures,
            "login_secs": s.login_secs,
            "logins_per_sec": s.online as f64 / s.login_secs.max(1e-9),
            "login_latency": percentiles(&s.login),
            "server_cpu_us_per_login": s.server_cpu_login_s.map(|c| c * 1e6 / s.online.max(1) as f64),
            "harness_cpu_us_per_login": s.harness_cpu_login_s * 1e6 / s.online.max(1) as f64,
            "rss_before_kib": s.rss_before_kib,
            "rss_after_kib": s.rss_after_kib,
            "rss_kib_per_idle_session": rss_per_session,
            "chat": steps,
            "find_max_rate": if args.find_max { best_rate } else { None },
            "relogins": s.relogins,
            "relogin_failures": s.relogin_failures,
            "relogin_latency": percentiles(&s.relogin),
            "db_cpu_us_per_login": s.db_cpu_login_s.map(|c| c * 1e6 / s.online.max(1) as f64),
            "offline": offline,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&v).expect("JSON")) {
            eprintln!("rjabberd-bench: cannot write {}: {e}", path.display());
        }
    }
    if let Some(path) = &args.svg {
        let h = s
            .steps
            .last()
            .map(|st| &st.latency)
            .filter(|h| !h.is_empty())
            .unwrap_or(&s.login);
        let title = match args.scenario {
            Scenario::Chat | Scenario::Mixed => format!(
                "{} chat latency at {:.0} msg/s",
                args.label,
                s.steps.last().map_or(0.0, |x| x.rate)
            ),
            _ => format!("{} login latency", args.label),
        };
        if let Err(e) = std::fs::write(path, percentile_svg(h, &title)) {
            eprintln!("rjabberd-bench: cannot write {}: {e}", path.display());
        }
        if !s.steps.is_empty() {
            let timeline: Vec<(u64, u64)> = s
                .steps
                .iter()
                .flat_map(|st| st.timeline.iter().copied())
                .collect();
            let path = path.with_file_name(format!(
                "{}-timeline.svg",
                path.file_stem()
                    .map_or("chat".into(), |s| s.to_string_lossy())
            ));
            let title = format!(
                "{}: messages received per second and p99 per second",
                args.label
            );
            if let Err(e) = std::fs::write(&path, timeline_svg(&timeline, &title)) {
                eprintln!("rjabberd-bench: cannot write {}: {e}", path.display());
            }
        }
    }
}

/// µs per item of CPU seconds, and with the database's beside: `(server, server + db)`.
fn per_item(server: Option<f64>, db: Option<f64>, n: u64) -> (Option<f64>, Option<f64>) {
    let per = |c: f64| c * 1e6 / n.max(1) as f64;
    (server.map(per), server.zip(db).map(|(s, d)| per(s + d)))
}

fn cpu_text((server, both): (Option<f64>, Option<f64>)) -> String {
    match (server, both) {
        (Some(s), Some(b)) => format!("server CPU per message {s:.1} µs, server+db {b:.1} µs"),
        (Some(s), None) => format!("server CPU per message {s:.1} µs"),
        _ => "no CPU figures (no --server-pid)".into(),
    }
}

/// The `offline` scenario's lines; its JSON.
fn offline_report(args: &RunArgs, o: &crate::offline::OfflineResult) -> serde_json::Value {
    let kept = o.sent.saturating_sub(o.refused);
    let store_rate = o.sent as f64 / o.store_secs.max(1e-9);
    let delivered = o.received.saturating_sub(o.surplus);
    let retrieve_rate = delivered as f64 / o.retrieve_secs.max(1e-9);
    let store_cpu = per_item(o.store_server_cpu_s, o.store_db_cpu_s, o.sent);
    let retrieve_cpu = per_item(o.retrieve_server_cpu_s, o.retrieve_db_cpu_s, delivered);
    println!(
        "offline store: {} messages ({} per sender, batches of {}) in {:.2} s = {store_rate:.0} msg/s; \
         refused {}, batch errors {}; {}",
        o.sent,
        args.messages,
        args.batch,
        o.store_secs,
        o.refused,
        o.barrier_errors,
        cpu_text(store_cpu)
    );
    println!(
        "offline retrieve: {} of {} recipients logged in ({} failed); received {delivered} of {kept} kept \
         (lost {}, duplicates {}) in {:.2} s = {retrieve_rate:.0} msg/s; {}",
        o.recipients_online,
        o.recipients,
        o.recipient_login_failures,
        o.lost(),
        o.surplus,
        o.retrieve_secs,
        cpu_text(retrieve_cpu)
    );
    println!(
        "  per recipient, login start to its last message: {}",
        line(&o.retrieve)
    );
    json!({
        "sent": o.sent,
        "refused": o.refused,
        "batch_errors": o.barrier_errors,
        "store_secs": o.store_secs,
        "store_msgs_per_sec": store_rate,
        "store_server_cpu_us_per_message": store_cpu.0,
        "store_server_db_cpu_us_per_message": store_cpu.1,
        "recipients": o.recipients,
        "recipients_online": o.recipients_online,
        "recipient_login_failures": o.recipient_login_failures,
        "received": delivered,
        "lost": o.lost(),
        "duplicates": o.surplus,
        "retrieve_secs": o.retrieve_secs,
        "retrieve_msgs_per_sec": retrieve_rate,
        "retrieve_server_cpu_us_per_message": retrieve_cpu.0,
        "retrieve_server_db_cpu_us_per_message": retrieve_cpu.1,
        "retrieve_latency": percentiles(&o.retrieve),
    })
}

/// Throughput (bars) and p99 (line) per second over the whole run, as a self-contained SVG.
pub fn timeline_svg(timeline: &[(u64, u64)], title: &str) -> String {
    let (w, ht, left, right, bottom) = (800.0, 420.0, 80.0, 80.0, 40.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{ht}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/><text x='{left}' y='20' font-size='14'>{}</text>",
        title.replace('<', "&lt;")
    );
    if timeline.is_empty() {
        svg.push_str("</svg>");
        return svg;
    }
    let n = timeline.len() as f64;
    let max_rate = timeline.iter().map(|t| t.0).max().unwrap_or(1).max(1) as f64 * 1.1;
    let max_p99 = (timeline.iter().map(|t| t.1).max().unwrap_or(1).max(1) as f64 / 1e6) * 1.1;
    let plot_w = w - left - right;
    let plot_h = ht - bottom - 40.0;
    let bar = plot_w / n;
    for (i, (count, _)) in timeline.iter().enumerate() {
        let h = *count as f64 / max_rate * plot_h;
        let _ = write!(
            svg,
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{h:.1}' fill='#aec7e8'/>",
            left + i as f64 * bar,
            ht - bottom - h,
            (bar - 1.0).max(1.0)
        );
    }
    let mut points = String::new();
    for (i, (_, p99)) in timeline.iter().enumerate() {
        let y = ht - bottom - (*p99 as f64 / 1e6) / max_p99 * plot_h;
        let _ = write!(points, "{:.1},{y:.1} ", left + (i as f64 + 0.5) * bar);
    }
    let _ = write!(
        svg,
        "<polyline fill='none' stroke='#d62728' stroke-width='2' points='{points}'/>\
         <line x1='{left}' y1='{}' x2='{}' y2='{}' stroke='black'/>\
         <text x='{}' y='{}' text-anchor='end'>{:.0} msg/s</text><text x='{}' y='{}'>{:.2} ms p99</text>\
         <text x='{left}' y='{}'>0 s</text><text x='{}' y='{}' text-anchor='end'>{} s</text>",
        ht - bottom,
        w - right,
        ht - bottom,
        left - 6.0,
        ht - bottom - plot_h + 4.0,
        max_rate,
        w - right + 6.0,
        ht - bottom - plot_h + 4.0,
        max_p99,
        ht - bottom + 16.0,
        w - right,
        ht - bottom + 16.0,
        timeline.len()
    );
    svg.push_str("</svg>");
    svg
}

/// An HDR-style percentile plot as a self-contained SVG.
pub fn percentile_svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, ht, left, bottom) = (800.0, 480.0, 70.0, 50.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{ht}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/><text x='{}' y='20' font-size='14'>{}</text>",
        left,
        title.replace('<', "&lt;")
    );
    if h.is_empty() {
        svg.push_str("<text x='100' y='100'>no samples</text></svg>");
        return svg;
    }
    // x = log10(1 / (1 - p)), up to 99.999 %.
    let max_x = 5.0f64;
    let max_y = ms(h.value_at_quantile(0.99999)).max(0.001) * 1.1;
    let px = |x: f64| left + x / max_x * (w - left - 20.0);
    let py = |y: f64| ht - bottom - y / max_y * (ht - bottom - 40.0);
    let mut points = String::new();
    for i in 0..=500 {
        let x = i as f64 / 100.0;
        let q = 1.0 - 10f64.powf(-x);
        let y = ms(h.value_at_quantile(q.min(0.99999)));
        let _ = write!(points, "{:.1},{:.1} ", px(x), py(y));
    }
    let _ = write!(
        svg,
        "<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{points}'/>\
         <line x1='{left}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{left}' y1='40' x2='{left}' y2='{}' stroke='black'/>",
        ht - bottom,
        w - 20.0,
        ht - bottom,
        ht - bottom
    );
    for (x, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let _ = write!(
            svg,
            "<text x='{:.1}' y='{}' text-anchor='middle'>{label}</text>",
            px(x),
            ht - bottom + 18.0
        );
    }
    for i in 0..=4 {
        let y = max_y * i as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x='{}' y='{:.1}' text-anchor='end'>{y:.2} ms</text>",
            left - 6.0,
            py(y) + 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

//! Budgets shared by two gateways on one real PostgreSQL store (SPEC §15): reservations are
//! made in the database, so 50 concurrent requests split over both instances cannot spend more
//! than the budget, and each instance sees the other's spend at once.

use crate::support::start;
use crate::support::{postgres, spend};
use postgres::PostgresServer;
use spend::{chat, config, fire, header, reservation, spent, usage, words, Env, ALICE};

#[test]
fn two_instances_sharing_postgres_hold_one_budget() {
    let pg = PostgresServer::start();
    let env = Env::new();
    let budget = "{ usd = 400, period = \"daily\" }";
    let a = start(&config(&pg.url(), &env.audit(), budget));
    let b = start(&config(
        &pg.url(),
        &env.dir.path().join("b.jsonl").display().to_string(),
        budget,
    ));
    let bases = [
        format!("http://{}", a.listen_addr()),
        format!("http://{}", b.listen_addr()),
    ];
    let text = words(20);
    let reserved = reservation(&bases[0], &text, 20);
    assert!(
        reserved >= 40.0,
        "the worst case covers the real cost: {reserved}"
    );

    let (answers, ok) = fire(&bases, &text, 50, "pg");
    let refused = answers.len() - ok;
    eprintln!("two instances: reservation ${reserved}; {ok} admitted, {refused} refused");
    // Each instance alone would have admitted ⌊400 / reservation⌋ at once; together they
    // admitted what one budget holds.
    // Settled in each request's logging phase, just after its answer: wait for the last ones.
    let want = 40.0 * ok as f64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut total = spent(&usage(&bases[0], ALICE));
    while total < want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        total = spent(&usage(&bases[0], ALICE));
    }
    assert_eq!(total, want);
    assert!(
        total <= 400.0,
        "spent ${total} of a $400 budget on two instances"
    );
    assert_eq!(
        spent(&usage(&bases[1], ALICE)),
        total,
        "both read the same spend"
    );

    // The spend one instance made is refused by the other at once.
    if total + reserved > 400.0 {
        for base in &bases {
            let r = chat(base, ALICE, "mock-echo", &text, 20, "after");
            assert_eq!(r.status().as_u16(), 429);
            assert!(header(&r, "x-sluice-budget-remaining-usd").is_some());
        }
    }
}

//! `bench-categorise`: throughput of the transaction categoriser on one core.
//!
//! Generates 1,000,000 synthetic Baltic transactions (fixed seed: card payments with and
//! without a merchant category code, salaries, rent, savings, utility invoices, transfers
//! between people, fees, interest; names with diacritics; remittance texts of realistic
//! length), categorises all of them on this thread a few times and prints the best run.
//! For comparison it also runs the seed's approach over the same transactions: lower-case
//! each text and try `contains(keyword)` for every keyword of the built-in rules, first hit
//! wins. Run it in release mode:
//!
//! `cargo run --release -p infra --bin bench-categorise [COUNT]`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use shared::domain::{Categoriser, Category, CategoryInput, Currency, Direction, Money};

const DEFAULT_COUNT: usize = 1_000_000;
/// Best of many short runs: on a shared machine, some of them get a core to themselves.
const ENGINE_RUNS: usize = 10;
const NAIVE_RUNS: usize = 3;

/// One generated transaction, owning its texts.
struct Synthetic {
    counterparty: String,
    remittance: String,
    mcc: Option<&'static str>,
    amount: Money,
}

const CITIES: &[&str] = &[
    "Vilnius",
    "Kaunas",
    "Rīga",
    "Daugavpils",
    "Tallinn",
    "Tartu",
];

/// Card merchants as the sandbox bank reports them, with their MCC.
const CARD_MERCHANTS: &[(&str, &str)] = &[
    ("MAXIMA", "5411"),
    ("RIMI", "5411"),
    ("IKI", "5411"),
    ("LIDL", "5411"),
    ("SELVER", "5411"),
    ("PRISMA", "5411"),
    ("ELVI", "5411"),
    ("CIRCLE K", "5541"),
    ("VIADA", "5541"),
    ("NESTE", "5541"),
    ("VIRSI", "5541"),
    ("ALEXELA", "5541"),
    ("BOLT.EU", "4121"),
    ("WOLT", "5814"),
    ("Forto Dvaras", "5812"),
    ("Lokys", "5812"),
    ("Lido", "5812"),
    ("Olde Hansa", "5812"),
    ("Rataskaevu 16", "5812"),
    ("CAMELIA", "5912"),
    ("EUROVAISTINE", "5912"),
    ("BENU", "5912"),
    ("APOTHEKA", "5912"),
    ("IGNITIS", "4900"),
    ("ELEKTRUM", "4900"),
    ("TELIA", "4814"),
    ("TELE2", "4814"),
    ("BITE", "4814"),
    ("LMT", "4814"),
    ("ELISA", "4814"),
    ("SPOTIFY", "4899"),
    ("NETFLIX.COM", "4899"),
    ("AMAZON.COM", "5942"),
    ("STEAM PURCHASE", "5816"),
    ("UBER TRIP", "4121"),
    ("Alpha Bankas ATM Vilnius", "6011"),
];

/// Merchants as banks print them when no MCC comes along (diacritics, legal forms,
/// platform references).
const TEXT_MERCHANTS: &[&str] = &[
    "Maxima LT, UAB",
    "UAB \"RIMI LIETUVA\"",
    "IKI Žirmūnai",
    "Bolt Food",
    "BOLT.EU/O/2403151234",
    "Wolt Lietuva",
    "Eurovaistinė",
    "Gintarinė vaistinė",
    "Mēness aptieka",
    "Rīgas satiksme",
    "RIGAS SATIKSME",
    "Circle K Lietuva",
    "Südameapteek",
    "Ignitis UAB",
    "Telia Lietuva, AB",
    "BITĖ Lietuva",
    "McDonald's Kaunas",
    "Forum Cinemas",
    "airBaltic",
    "Senukai",
    "Čili Pica",
    "Unknown Shop SIA",
    "Kavinė Mėta",
];

const EMPLOYERS: &[&str] = &[
    "UAB Baltic Software",
    "UAB Vilniaus Logistika",
    "SIA Rīgas Tehnoloģijas",
    "SIA Daugava Consulting",
    "OÜ Tallinna Tarkvara",
    "AS Põhja Logistika",
];

const SALARY_TEXTS: &[&str] = &[
    "SALARY 2025-03",
    "Darba alga par 2025. gada martu",
    "Atlyginimas už 2025 m. kovo mėn.",
    "Palk märts 2025",
    "Töötasu 03/2025",
    "Bonus Q1 2025",
];

const LANDLORDS: &[&str] = &[
    "Jonas Petraitis",
    "Asta Jankauskienė",
    "Anna Kalniņa",
    "Pēteris Liepa",
    "Mari Kask",
    "Toomas Saar",
];

const RENT_TEXTS: &[&str] = &[
    "Rent 2025-03",
    "Buto nuoma už 2025 m. kovą, Žirmūnų g. 12-34, Vilnius",
    "Dzīvokļa īre par martu, Brīvības iela 101-7",
    "Korteri üür märts 2025",
];

const PEOPLE: &[&str] = &[
    "Teodoras Petrauskas",
    "Rūta Kazlauskienė",
    "Jānis Bērziņš",
    "Kadri Tamm",
    "Mateo Rossi",
    "Paulius Rimkus",
    "Līga Ozoliņa",
];

const P2P_TEXTS: &[&str] = &[
    "Už vakarienę 🍕",
    "Skola",
    "Pārskaitījums",
    "Dāvana dzimšanas dienā",
    "Kino piletid",
    "Return of the money for the concert tickets, thanks!",
];

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn money(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), Currency::EUR).expect("small amounts are valid")
}

fn reference(rng: &mut StdRng) -> String {
    format!("{:010}", rng.random_range(0..10_000_000_000u64))
}

fn generate(count: usize) -> Vec<Synthetic> {
    let mut rng = StdRng::seed_from_u64(0x00CA_7E60_2150);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let roll = rng.random_range(0..100);
        let city = pick(&mut rng, CITIES);
        let tx = match roll {
            // Card payments with an MCC.
            0..=49 => {
                let (merchant, mcc) = pick(&mut rng, CARD_MERCHANTS);
                let card = rng.random_range(1000..10_000);
                let remittance = if rng.random_bool(0.5) {
                    format!("Card payment {merchant}, {city} *{card}")
                } else {
                    format!(
                        "PIRKINYS {merchant} {city} 2025-03-{:02} KORTELĖ ****{card} REF {}",
                        rng.random_range(1..29),
                        reference(&mut rng)
                    )
                };
                let sign = if rng.random_bool(0.02) { 1 } else { -1 };
                Synthetic {
                    counterparty: merchant.to_owned(),
                    remittance,
                    mcc: Some(mcc),
                    amount: money(sign * rng.random_range(150..=12_000)),
                }
            }
            // Card payments without an MCC.
            50..=64 => {
                let merchant = pick(&mut rng, TEXT_MERCHANTS);
                Synthetic {
                    counterparty: merchant.to_owned(),
                    remittance: format!(
                        "Mokėjimas kortele {merchant}, {city}. Operacijos Nr. {}",
                        reference(&mut rng)
                    ),
                    mcc: None,
                    amount: money(-rng.random_range(150..=9_000)),
                }
            }
            65..=70 => Synthetic {
                counterparty: pick(&mut rng, EMPLOYERS).to_owned(),
                remittance: pick(&mut rng, SALARY_TEXTS).to_owned(),
                mcc: None,
                amount: money(rng.random_range(150_000..=450_000)),
            },
            71..=75 => Synthetic {
                counterparty: pick(&mut rng, LANDLORDS).to_owned(),
                remittance: pick(&mut rng, RENT_TEXTS).to_owned(),
                mcc: None,
                amount: money(-rng.random_range(40_000..=90_000)),
            },
            76..=79 => Synthetic {
                counterparty: pick(&mut rng, PEOPLE).to_owned(),
                remittance: format!("Savings 2025-{:02}", rng.random_range(1..13)),
                mcc: None,
                amount: money(if rng.random_bool(0.5) { 1 } else { -1 } * 10_000),
            },
            80..=84 => {
                let (name, what) = pick(
                    &mut rng,
                    &[
                        ("Ignitis UAB", "elektros energiją"),
                        ("Elektrum Eesti OÜ", "elekter"),
                        ("Vilniaus vandenys", "vandenį"),
                        ("TELE2 SIA", "mobilos sakarus"),
                        ("Rīgas ūdens", "ūdensapgādi"),
                    ],
                );
                Synthetic {
                    counterparty: name.to_owned(),
                    remittance: format!(
                        "Sąskaita Nr. {} už 2025-02 {what}, mokėtojo kodas {}",
                        reference(&mut rng),
                        reference(&mut rng)
                    ),
                    mcc: None,
                    amount: money(-rng.random_range(1_500..=15_000)),
                }
            }
            85..=94 => Synthetic {
                counterparty: pick(&mut rng, PEOPLE).to_owned(),
                remittance: pick(&mut rng, P2P_TEXTS).to_owned(),
                mcc: None,
                amount: money(
                    if rng.random_bool(0.5) { 1 } else { -1 } * rng.random_range(500..=20_000),
                ),
            },
            95..=96 => Synthetic {
                counterparty: "Alpha Bankas".to_owned(),
                remittance: "Account maintenance fee 03/2025".to_owned(),
                mcc: None,
                amount: money(-rng.random_range(100..=500)),
            },
            _ => Synthetic {
                counterparty: "Alpha Bankas".to_owned(),
                remittance: format!("Interest 2025-{:02}", rng.random_range(1..13)),
                mcc: None,
                amount: money(rng.random_range(50..=450)),
            },
        };
        out.push(tx);
    }
    out
}

/// The seed's keyword table, with every keyword of the built-in rules, in file order.
fn naive_keywords() -> Vec<(String, Category)> {
    let rules: serde_json::Value =
        serde_json::from_str(shared::domain::category::BUILTIN_RULES_JSON)
            .expect("built-in rules are JSON");
    let mut keywords = Vec::new();
    for rule in rules["keywords"].as_array().into_iter().flatten() {
        let category: Category = serde_json::from_value(rule["category"].clone())
            .expect("built-in rules name known categories");
        for word in rule["words"].as_array().into_iter().flatten() {
            if let Some(word) = word.as_str() {
                keywords.push((word.to_lowercase(), category));
            }
        }
    }
    keywords
}

/// `text.toLowerCase().includes(keyword)`, first hit wins, over both texts.
fn naive(keywords: &[(String, Category)], input: &CategoryInput<'_>) -> Category {
    for text in [input.counterparty, input.remittance].into_iter().flatten() {
        let lower = text.to_lowercase();
        for (keyword, category) in keywords {
            if lower.contains(keyword.as_str()) {
                return *category;
            }
        }
    }
    Category::Other
}

/// Best wall time of `runs` passes of `f` over all inputs.
fn best_of(
    runs: usize,
    inputs: &[CategoryInput<'_>],
    mut f: impl FnMut(&CategoryInput<'_>) -> Category,
) -> (Duration, Vec<Category>) {
    let mut best = Duration::MAX;
    let mut results = Vec::with_capacity(inputs.len());
    for _ in 0..runs {
        results.clear();
        let start = Instant::now();
        for input in inputs {
            results.push(f(black_box(input)));
        }
        let elapsed = start.elapsed();
        black_box(&results);
        best = best.min(elapsed);
    }
    (best, results)
}

fn line(label: &str, count: usize, elapsed: Duration) -> f64 {
    let rate = count as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "{label}: {count} transactions in {:.1} ms = {rate:.2} million tx/s (one core)",
        elapsed.as_secs_f64() * 1e3
    );
    rate
}

fn main() -> anyhow::Result<()> {
    let count = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => DEFAULT_COUNT,
    };
    let transactions = generate(count);
    let inputs: Vec<CategoryInput<'_>> = transactions
        .iter()
        .map(|t| CategoryInput {
            counterparty: Some(&t.counterparty),
            remittance: Some(&t.remittance),
            merchant_category_code: t.mcc,
            direction: Direction::of(&t.amount),
        })
        .collect();
    let with_mcc = inputs
        .iter()
        .filter(|i| i.merchant_category_code.is_some())
        .count();
    let text_bytes: usize = transactions
        .iter()
        .map(|t| t.counterparty.len() + t.remittance.len())
        .sum();
    println!(
        "{count} synthetic transactions: {:.0}% with an MCC, {:.0} bytes of text on average",
        100.0 * with_mcc as f64 / count.max(1) as f64,
        text_bytes as f64 / count.max(1) as f64
    );

    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let one_minute = load.split_whitespace().next().unwrap_or("?");
        println!(
            "load average {one_minute} on {} cores (throughput drops when other work shares them)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }

    let categoriser = Categoriser::builtin();
    let (engine_time, engine) = best_of(ENGINE_RUNS, &inputs, |i| categoriser.categorise(i));
    let engine_rate = line("categorisation", count, engine_time);

    let keywords = naive_keywords();
    let (naive_time, seed) = best_of(NAIVE_RUNS, &inputs, |i| naive(&keywords, i));
    let naive_rate = line("naive lower-case substring loop (seed)", count, naive_time);
    let agree = engine.iter().zip(&seed).filter(|(a, b)| a == b).count();
    println!(
        "speed-up: {:.1}x; the naive loop agrees with the engine on {:.1}% of transactions",
        engine_rate / naive_rate,
        100.0 * agree as f64 / count.max(1) as f64
    );

    let mut per_category: BTreeMap<Category, usize> = BTreeMap::new();
    for category in &engine {
        *per_category.entry(*category).or_default() += 1;
    }
    let shares: Vec<String> = per_category
        .iter()
        .map(|(c, n)| format!("{c} {:.1}%", 100.0 * *n as f64 / count.max(1) as f64))
        .collect();
    println!("categories: {}", shares.join(", "));
    Ok(())
}

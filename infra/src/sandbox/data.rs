//! Deterministic account and transaction data per (seed, bank, PSU).
//!
//! Every account and every day of history has its own RNG seeded from a stable hash of
//! (seed, bank, PSU, account, day), so a transaction keeps its id and content whatever day the
//! history is looked at from; only the 6-month window moves with the calendar. Money is kept
//! in integer minor units (cents) throughout.

use chrono::{Datelike, Days, NaiveDate, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::banks::Bank;
use super::util::{make_iban, stable_hash};

/// The PSU used when a request carries no PSU-ID header.
pub const DEFAULT_PSU: &str = "demo";

/// Days of booked history, ending today (about six months).
pub const HISTORY_DAYS: u64 = 183;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Current,
    Savings,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub index: usize,
    pub resource_id: String,
    pub iban: String,
    pub currency: &'static str,
    pub name: &'static str,
    pub product: &'static str,
    pub kind: AccountKind,
}

impl Account {
    /// ISO 20022 cash account type code: CACC for current accounts, SVGS for savings.
    pub fn cash_account_type(&self) -> &'static str {
        match self.kind {
            AccountKind::Current => "CACC",
            AccountKind::Savings => "SVGS",
        }
    }
}

/// One transaction as the bank reports it. Negative amounts are debits.
#[derive(Debug, Clone)]
pub struct Tx {
    pub id: String,
    pub entry_reference: String,
    pub booking_date: NaiveDate,
    pub value_date: NaiveDate,
    pub amount_cents: i64,
    pub currency: &'static str,
    /// Creditor for debits, debtor for credits.
    pub counterparty: String,
    pub counterparty_iban: Option<String>,
    pub remittance: String,
    pub mcc: Option<&'static str>,
    pub bank_transaction_code: &'static str,
    pub end_to_end_id: Option<String>,
}

/// Transactions (newest first) and balances of one account as of `today`.
#[derive(Debug, Clone)]
pub struct Statement {
    pub booked: Vec<Tx>,
    pub pending: Vec<Tx>,
    pub closing_booked_cents: i64,
    pub interim_available_cents: i64,
}

struct Layout {
    currency: &'static str,
    kind: AccountKind,
    name: &'static str,
    product: &'static str,
}

fn layouts(bank: &Bank) -> &'static [Layout] {
    match bank.country {
        "LT" => &[
            Layout {
                currency: "EUR",
                kind: AccountKind::Current,
                name: "Kasdienė sąskaita",
                product: "Alpha Kasdienis",
            },
            Layout {
                currency: "EUR",
                kind: AccountKind::Savings,
                name: "Taupomoji sąskaita",
                product: "Alpha Taupymas",
            },
            Layout {
                currency: "USD",
                kind: AccountKind::Current,
                name: "USD sąskaita",
                product: "Alpha Valiuta",
            },
        ],
        "LV" => &[
            Layout {
                currency: "EUR",
                kind: AccountKind::Current,
                name: "Norēķinu konts",
                product: "Baltija Ikdiena",
            },
            Layout {
                currency: "GBP",
                kind: AccountKind::Current,
                name: "GBP konts",
                product: "Baltija Valūta",
            },
            Layout {
                currency: "EUR",
                kind: AccountKind::Savings,
                name: "Krājkonts",
                product: "Baltija Uzkrājums",
            },
        ],
        _ => &[
            Layout {
                currency: "EUR",
                kind: AccountKind::Current,
                name: "Arvelduskonto",
                product: "Põhja Igapäev",
            },
            Layout {
                currency: "EUR",
                kind: AccountKind::Savings,
                name: "Säästukonto",
                product: "Põhja Säästja",
            },
            Layout {
                currency: "SEK",
                kind: AccountKind::Current,
                name: "SEK konto",
                product: "Põhja Valuuta",
            },
        ],
    }
}

fn rng_for(seed: u64, parts: &[&[u8]]) -> StdRng {
    let seed_bytes = seed.to_le_bytes();
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&seed_bytes);
    all.extend_from_slice(parts);
    StdRng::seed_from_u64(stable_hash(&all))
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// BBAN for an account at `bank`.
fn bank_bban(bank: &Bank, rng: &mut StdRng) -> String {
    match bank.country {
        "LT" => format!("{}{}", bank.bank_code, digits(rng, 11)),
        "LV" => format!("{}{}", bank.bank_code, digits(rng, 13)),
        _ => format!("{}{}", bank.bank_code, digits(rng, 14)),
    }
}

/// A stable, valid IBAN for a counterparty, derived from its name.
pub fn counterparty_iban(country: &str, name: &str) -> String {
    let mut rng = rng_for(
        0x5eed,
        &[b"counterparty", country.as_bytes(), name.as_bytes()],
    );
    let bban = match country {
        "LT" => format!("70440{}", digits(&mut rng, 11)),
        "LV" => format!("HABA{}", digits(&mut rng, 13)),
        "EE" => format!("22{}", digits(&mut rng, 14)),
        "FI" => digits(&mut rng, 14),
        "SE" => digits(&mut rng, 20),
        "NL" => format!("INGB{}", digits(&mut rng, 10)),
        "GB" => format!("NWBK{}", digits(&mut rng, 14)),
        "IE" => format!("AIBK{}", digits(&mut rng, 14)),
        _ => digits(&mut rng, 18), // DE
    };
    make_iban(country, &bban)
}

/// The accounts of a PSU at a bank. Every PSU id gets the bank's account layout (the default PSU
/// "demo" included); IBANs, ids and amounts differ per PSU.
pub fn psu_accounts(seed: u64, bank: &Bank, psu: &str) -> Vec<Account> {
    layouts(bank)
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let idx = (index as u64).to_le_bytes();
            let mut rng = rng_for(
                seed,
                &[b"account", bank.id.as_bytes(), psu.as_bytes(), &idx],
            );
            let iban = make_iban(bank.country, &bank_bban(bank, &mut rng));
            let resource_id = format!(
                "{:016x}",
                stable_hash(&[
                    &seed.to_le_bytes(),
                    b"resource",
                    bank.id.as_bytes(),
                    psu.as_bytes(),
                    &idx
                ])
            );
            Account {
                index,
                resource_id,
                iban,
                currency: l.currency,
                name: l.name,
                product: l.product,
                kind: l.kind,
            }
        })
        .collect()
}

/// The account holder's name.
pub fn owner_name(bank: &Bank, psu: &str) -> String {
    if psu == DEFAULT_PSU {
        return match bank.country {
            "LT" => "Rūta Kazlauskienė",
            "LV" => "Jānis Bērziņš",
            _ => "Kadri Tamm",
        }
        .to_owned();
    }
    let mut name = format!("Sandbox User {psu}");
    name.truncate(70);
    name
}

/// Per-PSU constants: salary, rent, where they shop.
struct Profile {
    salary: i64,
    rent: i64,
    savings_transfer: i64,
    employer: &'static str,
    landlord: &'static str,
    telecom: &'static str,
    card_last4: String,
    opening: [i64; 3],
}

struct CountryMerchants {
    employers: &'static [&'static str],
    landlords: &'static [&'static str],
    groceries: &'static [&'static str],
    fuel: &'static [&'static str],
    pharmacies: &'static [&'static str],
    electricity: &'static str,
    telecoms: &'static [&'static str],
    restaurants: &'static [&'static str],
}

fn merchants(country: &str) -> &'static CountryMerchants {
    match country {
        "LT" => &CountryMerchants {
            employers: &["UAB Baltic Software", "UAB Vilniaus Logistika"],
            landlords: &["Jonas Petraitis", "Asta Jankauskienė"],
            groceries: &["MAXIMA", "RIMI", "IKI", "LIDL"],
            fuel: &["CIRCLE K", "VIADA", "NESTE"],
            pharmacies: &["CAMELIA", "EUROVAISTINE", "BENU"],
            electricity: "IGNITIS",
            telecoms: &["TELIA", "TELE2", "BITE"],
            restaurants: &["Forto Dvaras", "Lokys", "Etno Dvaras", "Senoji Trobele"],
        },
        "LV" => &CountryMerchants {
            employers: &["SIA Rīgas Tehnoloģijas", "SIA Daugava Consulting"],
            landlords: &["Anna Kalniņa", "Pēteris Liepa"],
            groceries: &["MAXIMA", "RIMI", "LIDL", "ELVI"],
            fuel: &["CIRCLE K", "VIRSI", "NESTE"],
            pharmacies: &["CAMELIA", "MENESS APTIEKA", "BENU"],
            electricity: "ELEKTRUM",
            telecoms: &["TELE2", "LMT", "BITE"],
            restaurants: &["Lido", "Ala Pagrabs", "Rozengrals", "Vincents"],
        },
        _ => &CountryMerchants {
            employers: &["OÜ Tallinna Tarkvara", "AS Põhja Logistika"],
            landlords: &["Mari Kask", "Toomas Saar"],
            groceries: &["RIMI", "SELVER", "PRISMA", "MAXIMA", "LIDL"],
            fuel: &["CIRCLE K", "ALEXELA", "NESTE"],
            pharmacies: &["APOTHEKA", "BENU", "SUDAMEAPTEEK"],
            electricity: "ELEKTRUM EESTI",
            telecoms: &["TELIA", "ELISA", "TELE2"],
            restaurants: &["Olde Hansa", "Rataskaevu 16", "Kompressor", "F-hoone"],
        },
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn profile(seed: u64, bank: &Bank, psu: &str) -> Profile {
    let m = merchants(bank.country);
    let mut rng = rng_for(seed, &[b"profile", bank.id.as_bytes(), psu.as_bytes()]);
    Profile {
        salary: rng.random_range(2_100..=3_000i64) * 100,
        rent: rng.random_range(45..=75i64) * 1_000,
        savings_transfer: rng.random_range(2..=6i64) * 5_000,
        employer: pick(&mut rng, m.employers),
        landlord: pick(&mut rng, m.landlords),
        telecom: pick(&mut rng, m.telecoms),
        card_last4: digits(&mut rng, 4),
        opening: [
            rng.random_range(120_000..=250_000),
            rng.random_range(300_000..=1_500_000),
            rng.random_range(50_000..=200_000),
        ],
    }
}

/// Salary day: the 25th, moved back to Friday when it falls on a weekend.
fn is_payday(d: NaiveDate) -> bool {
    let Some(p) = d.with_day(25) else {
        return false;
    };
    let p = match p.weekday() {
        Weekday::Sat => p - Days::new(1),
        Weekday::Sun => p - Days::new(2),
        _ => p,
    };
    p == d
}

fn is_last_day_of_month(d: NaiveDate) -> bool {
    (d + Days::new(1)).day() == 1
}

const CARD_POS: &str = "PMNT-CCRD-POSD";
const CARD_ATM: &str = "PMNT-CCRD-CWDL";
const SCT_OUT: &str = "PMNT-ICDT-ESCT";
const SCT_IN: &str = "PMNT-RCDT-ESCT";
const BOOK_OUT: &str = "PMNT-ICDT-BOOK";
const BOOK_IN: &str = "PMNT-RCDT-BOOK";
const INTEREST: &str = "ACMT-MCOP-INTR";

/// Builds the transactions of one day in order.
struct DayBuilder<'a> {
    ctx: &'a Ctx<'a>,
    day: NaiveDate,
    pending: bool,
    seq: u32,
    out: Vec<Tx>,
}

struct Ctx<'a> {
    seed: u64,
    bank: &'a Bank,
    psu: &'a str,
    account: &'a Account,
    profile: Profile,
}

impl DayBuilder<'_> {
    fn push(
        &mut self,
        amount_cents: i64,
        counterparty: &str,
        counterparty_iban: Option<String>,
        remittance: String,
        mcc: Option<&'static str>,
        code: &'static str,
    ) {
        let ctx = self.ctx;
        let date = self.day.format("%Y%m%d").to_string();
        let kind: &[u8] = if self.pending { b"pending" } else { b"booked" };
        let seq = self.seq.to_le_bytes();
        let idx = (ctx.account.index as u64).to_le_bytes();
        let parts: [&[u8]; 8] = [
            &ctx.seed.to_le_bytes(),
            b"tx",
            ctx.bank.id.as_bytes(),
            ctx.psu.as_bytes(),
            &idx,
            date.as_bytes(),
            kind,
            &seq,
        ];
        let hi = stable_hash(&parts);
        let lo = stable_hash(&[&hi.to_le_bytes(), b"lo"]);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_be_bytes());
        bytes[8..].copy_from_slice(&lo.to_be_bytes());
        let id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        let entry_reference = format!(
            "{}{}{:02}{:03}",
            if self.pending { 'P' } else { 'B' },
            date,
            ctx.account.index,
            self.seq
        );
        let end_to_end_id = (code != CARD_POS && code != CARD_ATM && code != INTEREST)
            .then(|| format!("E2E-{date}-{:02}{:03}", ctx.account.index, self.seq));
        self.out.push(Tx {
            id,
            entry_reference,
            booking_date: self.day,
            value_date: self.day,
            amount_cents,
            currency: ctx.account.currency,
            counterparty: counterparty.to_owned(),
            counterparty_iban,
            remittance,
            mcc,
            bank_transaction_code: code,
            end_to_end_id,
        });
        self.seq += 1;
    }

    fn card(&mut self, merchant: &str, merchant_country: &str, cents: i64, mcc: &'static str) {
        let text = format!(
            "Card payment {merchant}, {} *{}",
            self.ctx.bank.city, self.ctx.profile.card_last4
        );
        let iban = counterparty_iban(merchant_country, merchant);
        self.push(-cents, merchant, Some(iban), text, Some(mcc), CARD_POS);
    }

    fn atm(&mut self, cents: i64) {
        let text = format!(
            "ATM withdrawal {} {} *{}",
            self.ctx.bank.name, self.ctx.bank.city, self.ctx.profile.card_last4
        );
        let name = format!("{} ATM {}", self.ctx.bank.name, self.ctx.bank.city);
        self.push(-cents, &name, None, text, Some("6011"), CARD_ATM);
    }
}

fn day_rng(ctx: &Ctx<'_>, day: NaiveDate, tag: &[u8]) -> StdRng {
    let date = day.format("%Y%m%d").to_string();
    let idx = (ctx.account.index as u64).to_le_bytes();
    rng_for(
        ctx.seed,
        &[
            b"day",
            ctx.bank.id.as_bytes(),
            ctx.psu.as_bytes(),
            &idx,
            date.as_bytes(),
            tag,
        ],
    )
}

/// Everyday spending of a EUR current account on one day.
fn eur_current_day(b: &mut DayBuilder<'_>, rng: &mut StdRng, own: &[Account]) {
    let ctx = b.ctx;
    let country = ctx.bank.country;
    let m = merchants(country);
    let d = b.day;
    let month = d.format("%Y-%m").to_string();
    if is_payday(d) {
        let employer = ctx.profile.employer;
        b.push(
            ctx.profile.salary,
            employer,
            Some(counterparty_iban(country, employer)),
            format!("SALARY {month}"),
            None,
            SCT_IN,
        );
    }
    if d.day() == 2 {
        let landlord = ctx.profile.landlord;
        b.push(
            -ctx.profile.rent,
            landlord,
            Some(counterparty_iban(country, landlord)),
            format!("Rent {month}"),
            None,
            SCT_OUT,
        );
    }
    if d.day() == 7 {
        b.card("SPOTIFY", "SE", 1_099, "4899");
    }
    if d.day() == 12 {
        let cents = rng.random_range(3_500..=9_000);
        b.card(m.electricity, country, cents, "4900");
    }
    if d.day() == 15 {
        let cents = rng.random_range(999..=2_999);
        b.card(ctx.profile.telecom, country, cents, "4814");
    }
    if d.day() == 19 {
        b.card("NETFLIX.COM", "NL", 1_399, "4899");
    }
    if d.day() == 26
        && let Some(savings) = own.iter().find(|a| a.kind == AccountKind::Savings)
    {
        let owner = owner_name(ctx.bank, ctx.psu);
        b.push(
            -ctx.profile.savings_transfer,
            &owner,
            Some(savings.iban.clone()),
            format!("Savings {month}"),
            None,
            BOOK_OUT,
        );
    }
    if rng.random_bool(0.55) {
        let cents = rng.random_range(350..=6_500);
        b.card(pick(rng, m.groceries), country, cents, "5411");
    }
    if rng.random_bool(0.10) {
        let cents = rng.random_range(3_000..=7_000);
        b.card(pick(rng, m.fuel), country, cents, "5541");
    }
    if rng.random_bool(0.15) {
        let cents = rng.random_range(300..=1_500);
        b.card("BOLT.EU", "EE", cents, "4121");
    }
    if rng.random_bool(0.10) {
        let cents = rng.random_range(1_200..=3_500);
        b.card("WOLT", "FI", cents, "5814");
    }
    if rng.random_bool(0.12) {
        let cents = rng.random_range(800..=4_500);
        b.card(pick(rng, m.restaurants), country, cents, "5812");
    }
    if rng.random_bool(0.04) {
        let cents = rng.random_range(300..=3_000);
        b.card(pick(rng, m.pharmacies), country, cents, "5912");
    }
    if rng.random_bool(0.04) {
        let cents = pick(rng, &[2_000, 5_000, 10_000]);
        b.atm(cents);
    }
}

fn savings_day(b: &mut DayBuilder<'_>, rng: &mut StdRng, own: &[Account]) {
    let ctx = b.ctx;
    let month = b.day.format("%Y-%m").to_string();
    if b.day.day() == 26
        && let Some(current) = own
            .iter()
            .find(|a| a.kind == AccountKind::Current && a.currency == ctx.account.currency)
    {
        let owner = owner_name(ctx.bank, ctx.psu);
        b.push(
            ctx.profile.savings_transfer,
            &owner,
            Some(current.iban.clone()),
            format!("Savings {month}"),
            None,
            BOOK_IN,
        );
    }
    if is_last_day_of_month(b.day) {
        let cents = rng.random_range(50..=450);
        b.push(
            cents,
            ctx.bank.name,
            None,
            format!("Interest {month}"),
            None,
            INTEREST,
        );
    }
}

fn fx_current_day(b: &mut DayBuilder<'_>, rng: &mut StdRng) {
    let ctx = b.ctx;
    let month = b.day.format("%Y-%m").to_string();
    let gbp = ctx.account.currency == "GBP";
    if b.day.day() == 5 {
        let (name, country) = if gbp {
            ("Freelance Client Ltd", "GB")
        } else {
            ("Stripe Payments Europe Ltd", "IE")
        };
        let cents = rng.random_range(300..=900i64) * 100;
        b.push(
            cents,
            name,
            Some(counterparty_iban(country, name)),
            format!("Invoice {month}"),
            None,
            SCT_IN,
        );
    }
    if rng.random_bool(0.10) {
        let shops: &[(&str, &str, &'static str)] = if gbp {
            &[
                ("TESCO STORES", "GB", "5411"),
                ("TFL TRAVEL CHARGE", "GB", "4111"),
                ("PRET A MANGER", "GB", "5814"),
                ("AMAZON UK", "GB", "5942"),
                ("BOOTS", "GB", "5912"),
            ]
        } else {
            &[
                ("AMAZON.COM", "IE", "5942"),
                ("APPLE.COM/BILL", "IE", "5818"),
                ("STEAM PURCHASE", "DE", "5816"),
                ("UBER TRIP", "NL", "4121"),
                ("STARBUCKS", "NL", "5814"),
            ]
        };
        let (name, country, mcc) = pick(rng, shops);
        let cents = rng.random_range(400..=12_000);
        b.card(name, country, cents, mcc);
    }
}

fn pending_day(b: &mut DayBuilder<'_>, rng: &mut StdRng) {
    let ctx = b.ctx;
    let country = ctx.bank.country;
    let m = merchants(country);
    let count = rng.random_range(1..=2);
    for _ in 0..count {
        if ctx.account.currency != "EUR" {
            let cents = rng.random_range(400..=6_000);
            let name = if ctx.account.currency == "GBP" {
                "TESCO STORES"
            } else {
                "AMAZON.COM"
            };
            b.card(name, "IE", cents, "5411");
            continue;
        }
        match rng.random_range(0..4) {
            0 => {
                let cents = rng.random_range(350..=6_500);
                b.card(pick(rng, m.groceries), country, cents, "5411");
            }
            1 => {
                let cents = rng.random_range(300..=1_500);
                b.card("BOLT.EU", "EE", cents, "4121");
            }
            2 => {
                let cents = rng.random_range(1_200..=3_500);
                b.card("WOLT", "FI", cents, "5814");
            }
            _ => {
                let cents = rng.random_range(3_000..=7_000);
                b.card(pick(rng, m.fuel), country, cents, "5541");
            }
        }
    }
}

/// Transactions and balances of `account` (one of `own`, the PSU's accounts) as of `today`.
pub fn statement(
    seed: u64,
    bank: &Bank,
    psu: &str,
    own: &[Account],
    account: &Account,
    today: NaiveDate,
) -> Statement {
    let ctx = Ctx {
        seed,
        bank,
        psu,
        account,
        profile: profile(seed, bank, psu),
    };
    let start = today - Days::new(HISTORY_DAYS - 1);
    let mut booked = Vec::new();
    let mut day = start;
    while day <= today {
        let mut b = DayBuilder {
            ctx: &ctx,
            day,
            pending: false,
            seq: 0,
            out: Vec::new(),
        };
        let mut rng = day_rng(&ctx, day, b"booked");
        match (account.kind, account.currency) {
            (AccountKind::Savings, _) => savings_day(&mut b, &mut rng, own),
            (AccountKind::Current, "EUR") => eur_current_day(&mut b, &mut rng, own),
            (AccountKind::Current, _) => fx_current_day(&mut b, &mut rng),
        }
        booked.extend(b.out);
        day = day + Days::new(1);
    }
    let mut pending = Vec::new();
    if account.kind == AccountKind::Current {
        for day in [today - Days::new(1), today] {
            let mut b = DayBuilder {
                ctx: &ctx,
                day,
                pending: true,
                seq: 0,
                out: Vec::new(),
            };
            let mut rng = day_rng(&ctx, day, b"pending");
            pending_day(&mut b, &mut rng);
            pending.extend(b.out);
        }
    }
    let opening = ctx.profile.opening[account.index.min(2)];
    let closing = opening + booked.iter().map(|t| t.amount_cents).sum::<i64>();
    let interim = closing + pending.iter().map(|t| t.amount_cents).sum::<i64>();
    // Newest first, as banks usually list them.
    booked.reverse();
    pending.reverse();
    Statement {
        booked,
        pending,
        closing_booked_cents: closing,
        interim_available_cents: interim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::banks::{BANKS, bank};
    use crate::sandbox::util::is_valid_iban;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 3, 14).unwrap()
    }

    #[test]
    fn account_layouts_and_ibans() {
        let lt = psu_accounts(42, bank("lt-alpha").unwrap(), DEFAULT_PSU);
        assert_eq!(lt.len(), 3);
        assert_eq!(
            lt.iter()
                .map(|a| (a.currency, a.cash_account_type()))
                .collect::<Vec<_>>(),
            [("EUR", "CACC"), ("EUR", "SVGS"), ("USD", "CACC")]
        );
        let lv = psu_accounts(42, bank("lv-baltija").unwrap(), DEFAULT_PSU);
        assert_eq!(
            lv.iter().map(|a| a.currency).collect::<Vec<_>>(),
            ["EUR", "GBP", "EUR"]
        );
        let ee = psu_accounts(42, bank("ee-pohja").unwrap(), DEFAULT_PSU);
        assert_eq!(
            ee.iter()
                .map(|a| (a.currency, a.cash_account_type()))
                .collect::<Vec<_>>(),
            [("EUR", "CACC"), ("EUR", "SVGS"), ("SEK", "CACC")]
        );
        for (b, len) in [(&lt, 20), (&lv, 21), (&ee, 20)] {
            for a in b.iter() {
                assert_eq!(a.iban.len(), len, "{}", a.iban);
                assert!(is_valid_iban(&a.iban), "{}", a.iban);
            }
        }
        assert!(lt[0].iban.starts_with("LT"));
        assert!(lv[0].iban.starts_with("LV"));
        assert!(ee[0].iban.starts_with("EE"));
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let b = bank("lt-alpha").unwrap();
        let a1 = psu_accounts(7, b, DEFAULT_PSU);
        let a2 = psu_accounts(7, b, DEFAULT_PSU);
        let other = psu_accounts(8, b, DEFAULT_PSU);
        let bob = psu_accounts(7, b, "bob");
        assert_eq!(a1[0].iban, a2[0].iban);
        assert_ne!(a1[0].iban, other[0].iban);
        assert_ne!(a1[0].iban, bob[0].iban);
        let s1 = statement(7, b, DEFAULT_PSU, &a1, &a1[0], today());
        let s2 = statement(7, b, DEFAULT_PSU, &a2, &a2[0], today());
        assert_eq!(s1.booked.len(), s2.booked.len());
        assert_eq!(s1.booked[0].id, s2.booked[0].id);
        assert_eq!(s1.closing_booked_cents, s2.closing_booked_cents);
        // A transaction keeps its id when looked at from a later day.
        let later = statement(7, b, DEFAULT_PSU, &a1, &a1[0], today() + Days::new(3));
        let mid = &s1.booked[s1.booked.len() / 2];
        let same = later.booked.iter().find(|t| t.id == mid.id).unwrap();
        assert_eq!(same.amount_cents, mid.amount_cents);
        assert_eq!(same.entry_reference, mid.entry_reference);
    }

    #[test]
    fn statement_contents() {
        for b in BANKS.iter() {
            let accounts = psu_accounts(42, b, DEFAULT_PSU);
            for a in &accounts {
                let s = statement(42, b, DEFAULT_PSU, &accounts, a, today());
                assert!(!s.booked.is_empty(), "{} {}", b.id, a.name);
                let pending_sum: i64 = s.pending.iter().map(|t| t.amount_cents).sum();
                assert_eq!(
                    s.interim_available_cents - s.closing_booked_cents,
                    pending_sum
                );
                for t in s.booked.iter().chain(&s.pending) {
                    assert!(t.entry_reference.len() <= 35);
                    assert!(t.remittance.chars().count() <= 140);
                    if let Some(mcc) = t.mcc {
                        assert_eq!(mcc.len(), 4);
                    }
                    if let Some(iban) = &t.counterparty_iban {
                        assert!(is_valid_iban(iban), "{iban}");
                    }
                    assert_ne!(t.amount_cents, 0);
                }
                if a.kind == AccountKind::Current {
                    assert!(!s.pending.is_empty());
                    assert!(
                        s.pending
                            .iter()
                            .all(|t| t.booking_date >= today() - Days::new(1))
                    );
                }
            }
            let main = statement(42, b, DEFAULT_PSU, &accounts, &accounts[0], today());
            assert!(main.booked.len() > 150, "{}", main.booked.len());
            assert!(
                main.booked
                    .iter()
                    .any(|t| t.remittance.starts_with("SALARY"))
            );
            assert!(main.booked.iter().any(|t| t.mcc == Some("5411")));
            assert!(main.booked.first().unwrap().booking_date <= today());
            let mut ids: Vec<_> = main.booked.iter().map(|t| t.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), main.booked.len());
        }
    }
}

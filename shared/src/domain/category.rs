//! Transaction categorisation: the spending or income category of a bank transaction.
//!
//! The rules are data: `shared/data/categories.json` is compiled in as the default, and an
//! operator's file can extend or replace it (format and examples in
//! `docs/categorisation.md`). A [`Categoriser`] applies them in this order:
//!
//! 1. **Merchant category code.** The ISO 18245 MCC of a card transaction, when the rules
//!    map it, decides: the card network's classification beats any guess from text. A card
//!    refund keeps the merchant's category, so that spending per category nets out. The
//!    one exception is a keyword rule that names the MCC's category in `refines`: delivery
//!    platforms charge with restaurant (5812/5814) or taxi (4121) codes, yet Wolt and
//!    Bolt Food are `food_delivery`.
//! 2. **Keywords**, over the counterparty's name and the remittance text, as whole words
//!    ("teo" never matches inside "Teodoras") after normalisation: lower case, Latin
//!    diacritics folded ("Rīgas" = "rigas", "Jankauskienė" = "jankauskiene"), apostrophes
//!    dropped ("McDonald's" = "mcdonalds") and anything else that is not a letter or digit
//!    a word separator ("BOLT.EU" = "bolt eu"). A rule may be limited to debits or to
//!    credits. Among the rules that match, the highest `priority` wins, then the longest
//!    keyword ("bolt food" over "bolt"), then the rule listed first. Priority comes before
//!    length so that weak generic words ("transfer", "fee", priority below 0) never beat a
//!    specific one just for being longer ("Rent transfer" is rent).
//! 3. **Sign.** A credit that no rule claims is [`Category::Income`] (a salary needs a
//!    salary keyword).
//! 4. Everything else is [`Category::Other`].
//!
//! Unlike the seed's `text.toLowerCase().includes(keyword)` loop, the keywords are
//! compiled into one Aho-Corasick DFA. Each keyword is stored padded with a separator on
//! both sides (`" bolt food "`) and the text is fed to the DFA byte by byte while it is
//! being normalised, framed by separators: a pattern can then only match whole words, the
//! DFA reports every (overlapping) keyword in one pass, words that cannot start a keyword
//! are skipped, and categorising allocates nothing.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};
use serde::{Deserialize, Serialize};

use super::money::Money;
use crate::bank::Transaction;

/// The environment variable naming an operator's rules file for [`Categoriser::from_env`].
pub const RULES_PATH_ENV: &str = "CATEGORY_RULES_PATH";

/// The built-in rules, compiled in so that a Lambda needs no file to categorise.
pub const BUILTIN_RULES_JSON: &str = include_str!("../../data/categories.json");

/// The only rules file format version so far.
const RULES_VERSION: u32 = 1;

/// A transaction category, (de)serialised as its stable id (`"food_delivery"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Supermarkets and food shops.
    Groceries,
    /// Restaurants, cafés, bars and fast food.
    Restaurants,
    /// Meal delivery platforms (Wolt, Bolt Food, …).
    FoodDelivery,
    /// Public transport, taxis and ride hailing, parking.
    Transport,
    /// Fuel stations and EV charging.
    Fuel,
    /// Electricity, gas, water, heating, waste.
    Utilities,
    /// Mobile, internet and phone services.
    Telecom,
    /// Pharmacies, doctors, dentists.
    Health,
    /// Rent paid.
    Rent,
    /// Salary received.
    Salary,
    /// Moves between one's own accounts, top-ups and generic transfers.
    Transfers,
    /// Retail other than food.
    Shopping,
    /// Streaming, games, cinemas, events, sports and leisure.
    Entertainment,
    /// Flights, hotels, ferries, car rental.
    Travel,
    /// Cash withdrawals and deposits.
    Cash,
    /// Bank and service fees.
    Fees,
    /// Credits that are not salary: interest, dividends, refunds, payments received.
    Income,
    /// Nothing matched.
    Other,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 18] = [
        Category::Groceries,
        Category::Restaurants,
        Category::FoodDelivery,
        Category::Transport,
        Category::Fuel,
        Category::Utilities,
        Category::Telecom,
        Category::Health,
        Category::Rent,
        Category::Salary,
        Category::Transfers,
        Category::Shopping,
        Category::Entertainment,
        Category::Travel,
        Category::Cash,
        Category::Fees,
        Category::Income,
        Category::Other,
    ];

    /// The stable id, e.g. `"food_delivery"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Groceries => "groceries",
            Category::Restaurants => "restaurants",
            Category::FoodDelivery => "food_delivery",
            Category::Transport => "transport",
            Category::Fuel => "fuel",
            Category::Utilities => "utilities",
            Category::Telecom => "telecom",
            Category::Health => "health",
            Category::Rent => "rent",
            Category::Salary => "salary",
            Category::Transfers => "transfers",
            Category::Shopping => "shopping",
            Category::Entertainment => "entertainment",
            Category::Travel => "travel",
            Category::Cash => "cash",
            Category::Fees => "fees",
            Category::Income => "income",
            Category::Other => "other",
        }
    }

    /// The category with this exact id, if any.
    #[must_use]
    pub fn parse(id: &str) -> Option<Category> {
        Self::ALL.into_iter().find(|c| c.as_str() == id)
    }

    /// This category's bit in a set of categories (there are fewer than 32).
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id is not one of [`Category::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown category '{}'", .0.escape_debug())]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::parse(s).ok_or_else(|| UnknownCategory(s.chars().take(64).collect()))
    }
}

/// Which way the money moved, from the account holder's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Money left the account (negative amount). A zero amount counts as a debit: it is
    /// never income.
    Debit,
    /// Money arrived (positive amount).
    Credit,
}

impl Direction {
    /// The direction of a signed transaction amount.
    #[must_use]
    pub fn of(amount: &Money) -> Direction {
        if amount.is_positive() {
            Direction::Credit
        } else {
            Direction::Debit
        }
    }
}

/// What the categoriser looks at, borrowed from a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryInput<'a> {
    /// The other party: the creditor of a debit, the debtor of a credit.
    pub counterparty: Option<&'a str>,
    /// The unstructured remittance information.
    pub remittance: Option<&'a str>,
    /// The ISO 18245 merchant category code of a card transaction ("5411"). Anything but 1
    /// to 4 ASCII digits is ignored.
    pub merchant_category_code: Option<&'a str>,
    pub direction: Direction,
}

impl<'a> CategoryInput<'a> {
    /// The fields of a bank transaction. The counterparty is the creditor of a debit and
    /// the debtor of a credit (the other name, if a bank fills any, is usually the account
    /// holder, whose name says nothing about the category); when a bank leaves it empty,
    /// the other name is used.
    #[must_use]
    pub fn from_transaction(tx: &'a Transaction) -> CategoryInput<'a> {
        let direction = Direction::of(&tx.amount);
        let (own_side, other_side) = match direction {
            Direction::Debit => (&tx.creditor_name, &tx.debtor_name),
            Direction::Credit => (&tx.debtor_name, &tx.creditor_name),
        };
        CategoryInput {
            counterparty: own_side.as_deref().or(other_side.as_deref()),
            remittance: tx.remittance.as_deref(),
            merchant_category_code: tx.merchant_category_code.as_deref(),
            direction,
        }
    }
}

/// Why a transaction got its category (see [`Categoriser::explain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis<'r> {
    /// The merchant category code alone.
    Mcc(u16),
    /// A keyword rule; `keyword` is the normalised keyword, `refined_mcc` the merchant
    /// category code whose category the rule refined, if any.
    Keyword {
        keyword: &'r str,
        refined_mcc: Option<u16>,
    },
    /// A credit that no rule claimed.
    Credit,
    /// Nothing matched.
    Fallback,
}

/// A category and the reason for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'r> {
    pub category: Category,
    pub basis: Basis<'r>,
}

/// A rules file that cannot be used. Messages name the rule and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the category rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("category rules file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<RulesError>,
    },
    /// Not JSON, wrong shape, unknown field or unknown category (with line and column).
    #[error("invalid category rules: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported category rules version {0} (expected {RULES_VERSION})")]
    Version(u32),
    #[error("the built-in category rules cannot extend themselves")]
    BuiltinExtends,
    #[error("the {category} rule has no {what}")]
    EmptyRule {
        category: Category,
        what: &'static str,
    },
    #[error(
        "invalid merchant category code '{}' in the {category} rule \
         (expected \"NNNN\" or a range \"NNNN-NNNN\")",
        code.escape_debug()
    )]
    BadMcc { category: Category, code: String },
    #[error("merchant category code {code:04} is mapped twice ({first} and {second})")]
    DuplicateMcc {
        code: u16,
        first: Category,
        second: Category,
    },
    #[error("keyword '{}' of the {category} rule has no letters or digits", word.escape_debug())]
    EmptyKeyword { category: Category, word: String },
    #[error(
        "keyword '{}' of the {category} rule has letters outside the Latin alphabet, \
         which the normaliser does not fold",
        word.escape_debug()
    )]
    UnsupportedKeyword { category: Category, word: String },
    #[error("keyword '{word}' ({sign}) appears twice ({first} and {second})")]
    DuplicateKeyword {
        word: String,
        sign: &'static str,
        first: Category,
        second: Category,
    },
    #[error("cannot build the keyword automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
    #[error("cannot start the keyword automaton: {0}")]
    AutomatonStart(#[from] aho_corasick::MatchError),
    #[error("too many keywords for one automaton")]
    TooManyKeywords,
}

// ---- the rules file ------------------------------------------------------------------

/// The JSON rules file. Unknown fields are rejected so that a typo ("refine") is an error
/// rather than a silently ignored rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    version: u32,
    /// Start from the built-in rules: this file's keywords and codes are added, and
    /// replace built-in ones with the same keyword and sign, or the same code.
    #[serde(default)]
    extends_builtin: bool,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    #[serde(default)]
    mcc: Vec<MccRule>,
    #[serde(default)]
    keywords: Vec<KeywordRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MccRule {
    category: Category,
    /// `"5411"` or an inclusive range `"3000-3299"`.
    codes: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeywordRule {
    category: Category,
    words: Vec<String>,
    #[serde(default)]
    sign: Sign,
    #[serde(default)]
    priority: i32,
    /// MCC categories this rule may override (step 1 of the precedence).
    #[serde(default)]
    refines: Vec<Category>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

/// Which transactions a keyword rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Sign {
    #[default]
    Any,
    Debit,
    Credit,
}

impl Sign {
    fn allows(self, direction: Direction) -> bool {
        match self {
            Sign::Any => true,
            Sign::Debit => direction == Direction::Debit,
            Sign::Credit => direction == Direction::Credit,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Sign::Any => "any sign",
            Sign::Debit => "debit",
            Sign::Credit => "credit",
        }
    }
}

/// One keyword of one rule, validated and normalised.
struct KeywordSpec {
    word: String,
    category: Category,
    sign: Sign,
    priority: i32,
    refines: u32,
}

/// A parsed and validated rules file.
struct Rules {
    mcc: Vec<(u16, Category)>,
    keywords: Vec<KeywordSpec>,
}

impl Rules {
    fn parse(json: &str) -> Result<(Rules, bool), RulesError> {
        let file: RulesFile = serde_json::from_str(json)?;
        if file.version != RULES_VERSION {
            return Err(RulesError::Version(file.version));
        }
        let mut mcc = Vec::new();
        let mut seen_mcc: HashMap<u16, Category> = HashMap::new();
        for rule in &file.mcc {
            if rule.codes.is_empty() {
                return Err(RulesError::EmptyRule {
                    category: rule.category,
                    what: "codes",
                });
            }
            for code in &rule.codes {
                let (first, last) = parse_mcc_range(code).ok_or_else(|| RulesError::BadMcc {
                    category: rule.category,
                    code: code.chars().take(64).collect(),
                })?;
                for value in first..=last {
                    if let Some(&earlier) = seen_mcc.get(&value) {
                        return Err(RulesError::DuplicateMcc {
                            code: value,
                            first: earlier,
                            second: rule.category,
                        });
                    }
                    seen_mcc.insert(value, rule.category);
                    mcc.push((value, rule.category));
                }
            }
        }
        let mut keywords = Vec::new();
        let mut seen_words: HashMap<(String, Sign), Category> = HashMap::new();
        for rule in &file.keywords {
            if rule.words.is_empty() {
                return Err(RulesError::EmptyRule {
                    category: rule.category,
                    what: "words",
                });
            }
            let refines = rule.refines.iter().fold(0, |set, c| set | c.bit());
            for raw in &rule.words {
                let word = normalise_keyword(raw, rule.category)?;
                match seen_words.entry((word.clone(), rule.sign)) {
                    MapEntry::Occupied(earlier) => {
                        return Err(RulesError::DuplicateKeyword {
                            word,
                            sign: rule.sign.as_str(),
                            first: *earlier.get(),
                            second: rule.category,
                        });
                    }
                    MapEntry::Vacant(slot) => {
                        slot.insert(rule.category);
                    }
                }
                keywords.push(KeywordSpec {
                    word,
                    category: rule.category,
                    sign: rule.sign,
                    priority: rule.priority,
                    refines,
                });
            }
        }
        Ok((Rules { mcc, keywords }, file.extends_builtin))
    }

    /// `self` on top of `base`: same codes and same (keyword, sign) pairs are replaced,
    /// and `self`'s keywords come first, so they also win ties.
    fn over(self, base: Rules) -> Rules {
        let mut mcc = base.mcc;
        mcc.extend(self.mcc); // later entries overwrite earlier ones when compiled
        let own: std::collections::HashSet<(&str, Sign)> = self
            .keywords
            .iter()
            .map(|k| (k.word.as_str(), k.sign))
            .collect();
        let inherited: Vec<KeywordSpec> = base
            .keywords
            .into_iter()
            .filter(|k| !own.contains(&(k.word.as_str(), k.sign)))
            .collect();
        let mut keywords = self.keywords;
        keywords.extend(inherited);
        Rules { mcc, keywords }
    }
}

/// `"5411"` → (5411, 5411); `"3000-3299"` → (3000, 3299).
fn parse_mcc_range(code: &str) -> Option<(u16, u16)> {
    let four = |s: &str| {
        (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    match code.split_once('-') {
        None => four(code).map(|c| (c, c)),
        Some((a, b)) => {
            let (a, b) = (four(a)?, four(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// The MCC of a transaction: 1 to 4 ASCII digits (banks that send it as a number drop
/// leading zeros), anything else is ignored.
fn transaction_mcc(code: &str) -> Option<u16> {
    let bytes = code.as_bytes();
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    let mut value = 0u16;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u16::from(b - b'0');
    }
    Some(value)
}

/// The normalised form of a keyword, without the padding separators.
fn normalise_keyword(raw: &str, category: Category) -> Result<String, RulesError> {
    let mut folder = Folder::new(Vec::with_capacity(raw.len() + 2));
    folder.put(SEP);
    folder.fold(raw);
    folder.put(SEP);
    let bytes = folder.sink;
    let inner = bytes.get(1..bytes.len() - 1).unwrap_or_default();
    if inner.is_empty() {
        return Err(RulesError::EmptyKeyword {
            category,
            word: raw.chars().take(64).collect(),
        });
    }
    if inner.contains(&OPAQUE) {
        return Err(RulesError::UnsupportedKeyword {
            category,
            word: raw.chars().take(64).collect(),
        });
    }
    // Only [a-z0-9 ] remain, so this is ASCII.
    Ok(String::from_utf8_lossy(inner).into_owned())
}

// ---- normalisation --------------------------------------------------------------------

/// Word separator; runs of separators collapse into one.
const SEP: u8 = b' ';
/// Between the counterparty and the remittance, so no keyword spans the two.
const FIELD_SEP: u8 = b'|';
/// Stands for a letter or digit that is not folded to ASCII (Cyrillic, Greek, CJK, …): it
/// is part of a word, so "teo" does not match in "teoя", but no keyword contains it.
const OPAQUE: u8 = b'_';
/// Marks bytes that are dropped (apostrophes).
const DROP: u8 = 0;

/// ASCII byte → normalised byte: lower-case letters and digits, [`DROP`] for apostrophes,
/// [`SEP`] for everything else.
static ASCII_FOLD: [u8; 128] = {
    let mut table = [SEP; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        table[i] = if b.is_ascii_lowercase() || b.is_ascii_digit() {
            b
        } else if b.is_ascii_uppercase() {
            b.to_ascii_lowercase()
        } else if b == b'\'' || b == b'`' {
            DROP
        } else {
            SEP
        };
        i += 1;
    }
    table
};

/// A non-ASCII character, normalised.
enum Folded {
    Drop,
    Sep,
    One(u8),
    Two(u8, u8),
}

/// Folds Latin-1 Supplement and Latin Extended-A letters (all Baltic, Nordic, German,
/// Polish, Czech, French … letters) and Romanian ș/ț to ASCII, drops combining marks (so
/// decomposed "e\u{0307}" folds like "ė") and typographic apostrophes. Other letters and
/// digits become [`OPAQUE`], everything else a separator.
fn fold_char(c: char) -> Folded {
    use Folded::{Drop, One, Sep, Two};
    match c {
        'À'..='Å' | 'à'..='å' | 'Ā'..='ą' => One(b'a'),
        'Æ' | 'æ' => Two(b'a', b'e'),
        'Ç' | 'ç' | 'Ć'..='č' => One(b'c'),
        'Ð' | 'ð' | 'Ď'..='đ' => One(b'd'),
        'È'..='Ë' | 'è'..='ë' | 'Ē'..='ě' => One(b'e'),
        'Ĝ'..='ģ' => One(b'g'),
        'Ĥ'..='ħ' => One(b'h'),
        'Ì'..='Ï' | 'ì'..='ï' | 'Ĩ'..='ı' => One(b'i'),
        'Ĳ' | 'ĳ' => Two(b'i', b'j'),
        'Ĵ' | 'ĵ' => One(b'j'),
        'Ķ'..='ĸ' => One(b'k'),
        'Ĺ'..='ł' => One(b'l'),
        'Ñ' | 'ñ' | 'Ń'..='ŋ' => One(b'n'),
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | 'Ō'..='ő' => One(b'o'),
        'Œ' | 'œ' => Two(b'o', b'e'),
        'Ŕ'..='ř' => One(b'r'),
        'Ś'..='š' | 'ſ' | 'Ș' | 'ș' => One(b's'),
        'ß' => Two(b's', b's'),
        'Ţ'..='ŧ' | 'Ț' | 'ț' => One(b't'),
        'Þ' | 'þ' => Two(b't', b'h'),
        'Ù'..='Ü' | 'ù'..='ü' | 'Ũ'..='ų' => One(b'u'),
        'Ŵ' | 'ŵ' => One(b'w'),
        'Ý' | 'ý' | 'ÿ' | 'Ŷ'..='Ÿ' => One(b'y'),
        'Ź'..='ž' => One(b'z'),
        '\u{0300}'..='\u{036F}' | '\u{2018}' | '\u{2019}' | '\u{02BC}' => Drop,
        c if c.is_alphanumeric() => One(OPAQUE),
        _ => Sep,
    }
}

/// Where normalised bytes go: the DFA while categorising, a `Vec` when compiling keywords.
trait Sink {
    fn byte(&mut self, b: u8);
}

impl Sink for Vec<u8> {
    fn byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// Normalises text into a [`Sink`], collapsing runs of separators. (The hot path,
/// [`Walk::text`], does the same inline.)
struct Folder<S> {
    sink: S,
    last: u8,
}

impl<S: Sink> Folder<S> {
    fn new(sink: S) -> Self {
        Folder { sink, last: DROP }
    }

    fn put(&mut self, b: u8) {
        if b == SEP && self.last == SEP {
            return;
        }
        self.last = b;
        self.sink.byte(b);
    }

    fn fold(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii() {
                i += 1;
                match ASCII_FOLD[usize::from(b)] {
                    DROP => {}
                    folded => self.put(folded),
                }
                continue;
            }
            let (folded, len) = fold_at(text, i);
            i += len;
            match folded {
                Folded::Drop => {}
                Folded::Sep => self.put(SEP),
                Folded::One(a) => self.put(a),
                Folded::Two(a, b) => {
                    self.put(a);
                    self.put(b);
                }
            }
        }
    }
}

/// Folds the non-ASCII character that starts at byte `i` of `text` (a character
/// boundary); also returns its length in bytes.
fn fold_at(text: &str, i: usize) -> (Folded, usize) {
    let bytes = text.as_bytes();
    // Baltic letters are two bytes long: decode those without the general decoder.
    let (c, len) = match (bytes.get(i), bytes.get(i + 1)) {
        (Some(&lead), Some(&next)) if lead & 0xE0 == 0xC0 => (
            char::from_u32((u32::from(lead & 0x1F) << 6) | u32::from(next & 0x3F)),
            2,
        ),
        _ => {
            let c = text.get(i..).and_then(|rest| rest.chars().next());
            (c, c.map_or(1, char::len_utf8))
        }
    };
    (c.map_or(Folded::Sep, fold_char), len)
}

// ---- the categoriser ------------------------------------------------------------------

/// One keyword rule as the hot path needs it.
#[derive(Clone, Copy, Debug)]
struct CompiledKeyword {
    category: Category,
    sign: Sign,
    priority: i32,
    /// Normalised keyword length in bytes.
    len: u32,
    /// Position in the merged rules: earlier wins a tie.
    order: u32,
    refines: u32,
    /// Index into `Categoriser::words`.
    word: u32,
}

impl CompiledKeyword {
    /// Higher is better: priority, then length, then the rule listed first.
    fn rank(&self) -> (i32, u32, Reverse<u32>) {
        (self.priority, self.len, Reverse(self.order))
    }
}

/// Categorises transactions with a set of rules. Build it once (at cold start) and share
/// it: it is immutable, `Send` and `Sync`, and [`Categoriser::categorise`] does not
/// allocate.
#[derive(Clone)]
pub struct Categoriser {
    /// MCC (0..=9999) → category.
    mcc: Box<[Option<Category>]>,
    /// The categories that some keyword rule refines.
    refinable: u32,
    /// The keyword automaton (see [`Table`]).
    table: Table,
    keywords: Vec<CompiledKeyword>,
    /// The distinct normalised keywords, for [`Basis::Keyword`].
    words: Vec<Box<str>>,
}

/// Symbols of the normalised text: the separator, `a`–`z`, `0`–`9`, and one class for the
/// bytes that no keyword contains (the field separator, [`OPAQUE`]).
const CLASSES: usize = 38;

/// Normalised byte → symbol class.
static CLASS_OF: [u8; 256] = {
    let mut table = [CLASSES as u8 - 1; 256];
    table[SEP as usize] = 0;
    let mut i = 0;
    while i < 26 {
        table[b'a' as usize + i] = 1 + i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = 27 + i as u8;
        i += 1;
    }
    table
};

/// ASCII input byte → symbol class of its normalised form ([`ASCII_FOLD`], then
/// [`CLASS_OF`]), or [`DROP`] for apostrophes: one lookup per byte in [`Walk::text`].
static ASCII_CLASS: [u8; 128] = {
    let mut table = [0; 128];
    let mut i = 0;
    while i < 128 {
        let folded = ASCII_FOLD[i];
        table[i] = if folded == DROP {
            DROP_CLASS
        } else {
            CLASS_OF[folded as usize]
        };
        i += 1;
    }
    table
};

/// The separator's class.
const SEP_CLASS: u8 = 0;
/// Marks dropped bytes in [`ASCII_CLASS`] (not a class).
const DROP_CLASS: u8 = u8::MAX;

/// A byte of each symbol class (the inverse of [`CLASS_OF`]).
const CLASS_BYTES: &[u8; CLASSES] = b" abcdefghijklmnopqrstuvwxyz0123456789|";

/// Set on a transition that enters a state where keywords end.
const MATCHES: u32 = 1 << 31;

/// The Aho-Corasick DFA of the padded keywords, re-laid as one flat table.
///
/// aho-corasick builds the automaton (standard semantics, unanchored: every keyword that
/// ends at a position is reported, overlapping ones included). Its transitions are then
/// copied, for the 38 symbol classes only, into `transitions`: a state is the index of its
/// first entry (so the next state is `transitions[state + class]`, one load per byte) and
/// a flag on the entry says whether the target state completes keywords: one table load
/// per byte instead of a call of the crate's `Automaton::next_state` (which a
/// size-optimised build does not inline). The start state is 0; every keyword starts with a separator, so inside a
/// word the walk can only be in state 0 when no keyword is in progress.
#[derive(Clone, Debug)]
struct Table {
    transitions: Box<[u32]>,
    /// Per state (index = state / CLASSES): the range of `rules` completed there.
    state_rules: Box<[(u32, u32)]>,
    /// Indices into `Categoriser::keywords`.
    rules: Box<[u32]>,
}

impl Table {
    /// `pattern_rules[p]`: the range of rules (in `Categoriser::keywords`) of pattern `p`.
    fn build(dfa: &DFA, pattern_rules: &[(u32, u32)]) -> Result<Table, RulesError> {
        let start = dfa.start_state(Anchored::No)?;
        let mut index_of: HashMap<StateID, u32> = HashMap::from([(start, 0)]);
        let mut queue = vec![start];
        let mut transitions = Vec::new();
        let mut state_rules = Vec::new();
        let mut rules = Vec::new();
        let mut next_index = 0;
        while let Some(&state) = queue.get(next_index) {
            next_index += 1;
            let from = rules.len() as u32;
            if dfa.is_match(state) {
                for i in 0..dfa.match_len(state) {
                    let (a, b) = pattern_rules[dfa.match_pattern(state, i).as_usize()];
                    rules.extend(a..b);
                }
            }
            state_rules.push((from, rules.len() as u32));
            for &byte in CLASS_BYTES {
                let target = dfa.next_state(Anchored::No, state, byte);
                let index = *index_of.entry(target).or_insert_with(|| {
                    queue.push(target);
                    (queue.len() - 1) as u32
                });
                let entry = index
                    .checked_mul(CLASSES as u32)
                    .filter(|&e| e < MATCHES)
                    .ok_or(RulesError::TooManyKeywords)?;
                let flag = if dfa.is_match(target) { MATCHES } else { 0 };
                transitions.push(entry | flag);
            }
        }
        Ok(Table {
            transitions: transitions.into_boxed_slice(),
            state_rules: state_rules.into_boxed_slice(),
            rules: rules.into_boxed_slice(),
        })
    }
}

impl fmt::Debug for Categoriser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Categoriser")
            .field("mcc_codes", &self.mcc.iter().flatten().count())
            .field("keywords", &self.keywords.len())
            .finish_non_exhaustive()
    }
}

impl Default for Categoriser {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Categoriser {
    /// The built-in rules (`shared/data/categories.json`).
    ///
    /// # Panics
    /// Never in practice: the built-in file is compiled in and a unit test builds it.
    #[must_use]
    pub fn builtin() -> Categoriser {
        Self::from_builtin_json().expect("the built-in category rules are valid")
    }

    /// Rules from JSON (the format of `docs/categorisation.md`). With
    /// `"extends_builtin": true` they are layered over the built-in rules, otherwise they
    /// replace them.
    ///
    /// # Errors
    /// [`RulesError`] naming the offending rule for malformed JSON, unknown fields or
    /// categories, bad codes, empty or duplicate keywords.
    pub fn from_json(json: &str) -> Result<Categoriser, RulesError> {
        let (rules, extends) = Rules::parse(json)?;
        let rules = if extends {
            let (builtin, _) = Rules::parse(BUILTIN_RULES_JSON)?;
            rules.over(builtin)
        } else {
            rules
        };
        Self::compile(rules)
    }

    /// Rules from a file (see [`Categoriser::from_json`]).
    ///
    /// # Errors
    /// [`RulesError::Read`] if the file cannot be read, [`RulesError::InFile`] around the
    /// errors of [`Categoriser::from_json`].
    pub fn from_path(path: &Path) -> Result<Categoriser, RulesError> {
        let json = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&json).map_err(|source| RulesError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The operator's rules file named by `CATEGORY_RULES_PATH`, or the built-in rules
    /// when the variable is unset or empty. A set but unreadable or invalid file is an
    /// error, not a silent fallback: the operator meant other rules.
    ///
    /// # Errors
    /// As [`Categoriser::from_path`].
    pub fn from_env() -> Result<Categoriser, RulesError> {
        match std::env::var_os(RULES_PATH_ENV) {
            Some(path) if !path.is_empty() => Self::from_path(Path::new(&path)),
            _ => Self::from_builtin_json(),
        }
    }

    fn from_builtin_json() -> Result<Categoriser, RulesError> {
        let (rules, extends) = Rules::parse(BUILTIN_RULES_JSON)?;
        if extends {
            return Err(RulesError::BuiltinExtends);
        }
        Self::compile(rules)
    }

    fn compile(rules: Rules) -> Result<Categoriser, RulesError> {
        let mut mcc = vec![None; 10_000].into_boxed_slice();
        for (code, category) in rules.mcc {
            mcc[usize::from(code)] = Some(category);
        }
        // Group the rules by keyword: one DFA pattern per distinct keyword.
        let mut pattern_of: HashMap<&str, usize> = HashMap::new();
        let mut grouped: Vec<Vec<CompiledKeyword>> = Vec::new();
        let mut words: Vec<Box<str>> = Vec::new();
        let mut refinable = 0;
        for (order, spec) in rules.keywords.iter().enumerate() {
            let pattern = *pattern_of.entry(spec.word.as_str()).or_insert_with(|| {
                words.push(spec.word.as_str().into());
                grouped.push(Vec::new());
                words.len() - 1
            });
            refinable |= spec.refines;
            grouped[pattern].push(CompiledKeyword {
                category: spec.category,
                sign: spec.sign,
                priority: spec.priority,
                len: u32::try_from(spec.word.len()).unwrap_or(u32::MAX),
                order: u32::try_from(order).unwrap_or(u32::MAX),
                refines: spec.refines,
                word: u32::try_from(pattern).unwrap_or(u32::MAX),
            });
        }
        let mut keywords = Vec::with_capacity(rules.keywords.len());
        let mut pattern_rules = Vec::with_capacity(grouped.len());
        for group in grouped {
            let start = keywords.len() as u32;
            keywords.extend(group);
            pattern_rules.push((start, keywords.len() as u32));
        }
        let padded: Vec<String> = words.iter().map(|w| format!(" {w} ")).collect();
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false) // every pattern starts with a space: nothing to skip ahead to
            .build(&padded)?;
        let table = Table::build(&dfa, &pattern_rules)?;
        Ok(Categoriser {
            mcc,
            refinable,
            table,
            keywords,
            words,
        })
    }

    /// The category of a transaction.
    #[must_use]
    pub fn categorise(&self, input: &CategoryInput<'_>) -> Category {
        self.explain(input).category
    }

    /// The category of a bank transaction (see [`CategoryInput::from_transaction`]).
    #[must_use]
    pub fn categorise_transaction(&self, tx: &Transaction) -> Category {
        self.categorise(&CategoryInput::from_transaction(tx))
    }

    /// The category of a transaction and the rule that decided it.
    #[must_use]
    pub fn explain(&self, input: &CategoryInput<'_>) -> Decision<'_> {
        let mcc = input
            .merchant_category_code
            .and_then(transaction_mcc)
            .and_then(|code| Some((code, self.mcc[usize::from(code)]?)));
        if let Some((code, category)) = mcc {
            if self.refinable & category.bit() != 0
                && let Some(rule) = self.best_keyword(input, Filter::Refines(category.bit()))
            {
                return self.keyword_decision(rule, Some(code));
            }
            return Decision {
                category,
                basis: Basis::Mcc(code),
            };
        }
        if let Some(rule) = self.best_keyword(input, Filter::Sign(input.direction)) {
            return self.keyword_decision(rule, None);
        }
        match input.direction {
            Direction::Credit => Decision {
                category: Category::Income,
                basis: Basis::Credit,
            },
            Direction::Debit => Decision {
                category: Category::Other,
                basis: Basis::Fallback,
            },
        }
    }

    fn keyword_decision(&self, rule: &CompiledKeyword, refined_mcc: Option<u16>) -> Decision<'_> {
        Decision {
            category: rule.category,
            basis: Basis::Keyword {
                keyword: &self.words[rule.word as usize],
                refined_mcc,
            },
        }
    }

    /// The best keyword rule that matches the text and passes `filter`: one DFA pass over
    /// " counterparty | remittance ", normalised on the fly.
    fn best_keyword(&self, input: &CategoryInput<'_>, filter: Filter) -> Option<&CompiledKeyword> {
        let mut walk = Walk {
            categoriser: self,
            state: 0,
            last: DROP,
            filter,
            best: None,
        };
        walk.put(SEP);
        if let Some(name) = input.counterparty {
            walk.text(name);
        }
        walk.put(SEP);
        walk.put(FIELD_SEP);
        walk.put(SEP);
        if let Some(text) = input.remittance {
            walk.text(text);
        }
        walk.put(SEP);
        walk.best
    }
}

/// Which keyword rules count in a scan.
#[derive(Clone, Copy)]
enum Filter {
    /// Rules whose sign allows this direction (no MCC category).
    Sign(Direction),
    /// Rules that refine one of these MCC categories. The sign plays no role here, as for
    /// the MCC category itself: a refund from Wolt stays food delivery.
    Refines(u32),
}

/// One scan: the text, normalised on the fly, walked through the keyword [`Table`],
/// keeping the best matching rule.
///
/// Every keyword starts with a separator, so when the walk is back in the start state
/// inside a word, nothing can match before the next separator and the rest of the word
/// is skipped without walking the table. Most words of a remittance text are.
struct Walk<'c> {
    categoriser: &'c Categoriser,
    state: u32,
    /// The last normalised byte, to collapse runs of separators.
    last: u8,
    filter: Filter,
    best: Option<&'c CompiledKeyword>,
}

impl Walk<'_> {
    /// Feeds one normalised byte.
    fn put(&mut self, b: u8) {
        if b == SEP && self.last == SEP {
            return;
        }
        self.last = b;
        if self.state == 0 && b != SEP {
            return; // idle inside a word
        }
        let c = self.categoriser;
        let next = c.table.transitions[(self.state + u32::from(CLASS_OF[usize::from(b)])) as usize];
        self.state = next & !MATCHES;
        if next & MATCHES != 0 {
            self.matched();
        }
    }

    /// Feeds a text. The same as [`Walk::put`] for each byte that [`Folder`] would
    /// produce, with the ASCII case (almost every byte) inline and in local variables.
    fn text(&mut self, text: &str) {
        let transitions = &*self.categoriser.table.transitions;
        let bytes = text.as_bytes();
        let (mut state, mut last) = (self.state, self.last);
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let Some(&class) = ASCII_CLASS.get(usize::from(b)) else {
                (self.state, self.last) = (state, last);
                let (folded, len) = fold_at(text, i);
                i += len;
                match folded {
                    Folded::Drop => {}
                    Folded::Sep => self.put(SEP),
                    Folded::One(a) => self.put(a),
                    Folded::Two(a, b) => {
                        self.put(a);
                        self.put(b);
                    }
                }
                (state, last) = (self.state, self.last);
                continue;
            };
            i += 1;
            if class == SEP_CLASS {
                if last == SEP {
                    continue;
                }
                last = SEP;
            } else if class == DROP_CLASS {
                continue;
            } else {
                last = b; // any byte but SEP will do
                if state == 0 {
                    // Idle inside a word: skip to the next separator or non-ASCII byte.
                    while let Some(&class) =
                        bytes.get(i).and_then(|&b| ASCII_CLASS.get(usize::from(b)))
                    {
                        if class == SEP_CLASS {
                            break;
                        }
                        i += 1;
                    }
                    continue;
                }
            }
            let next = transitions[(state + u32::from(class)) as usize];
            state = next & !MATCHES;
            if next & MATCHES != 0 {
                self.state = state;
                self.matched();
            }
        }
        (self.state, self.last) = (state, last);
    }

    /// Weighs the rules completed in the current state.
    #[inline(never)]
    fn matched(&mut self) {
        let c = self.categoriser;
        let (from, to) = c.table.state_rules[self.state as usize / CLASSES];
        for &index in &c.table.rules[from as usize..to as usize] {
            let rule = &c.keywords[index as usize];
            let applies = match self.filter {
                Filter::Sign(direction) => rule.sign.allows(direction),
                Filter::Refines(set) => rule.refines & set != 0,
            };
            if applies && self.best.is_none_or(|best| rule.rank() > best.rank()) {
                self.best = Some(rule);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;
    use proptest::prelude::*;

    /// The built-in rules, compiled once for all tests (and a second, independent copy).
    fn rules() -> &'static Categoriser {
        static RULES: std::sync::LazyLock<Categoriser> =
            std::sync::LazyLock::new(Categoriser::builtin);
        &RULES
    }

    fn other_copy() -> &'static Categoriser {
        static RULES: std::sync::LazyLock<Categoriser> =
            std::sync::LazyLock::new(Categoriser::builtin);
        &RULES
    }

    fn debit<'a>(counterparty: &'a str, remittance: &'a str) -> CategoryInput<'a> {
        CategoryInput {
            counterparty: Some(counterparty),
            remittance: Some(remittance),
            merchant_category_code: None,
            direction: Direction::Debit,
        }
    }

    fn credit<'a>(counterparty: &'a str, remittance: &'a str) -> CategoryInput<'a> {
        CategoryInput {
            direction: Direction::Credit,
            ..debit(counterparty, remittance)
        }
    }

    fn card<'a>(merchant: &'a str, mcc: &'a str) -> CategoryInput<'a> {
        CategoryInput {
            merchant_category_code: Some(mcc),
            ..debit(merchant, "")
        }
    }

    fn cat(input: CategoryInput<'_>) -> Category {
        rules().categorise(&input)
    }

    fn normalised(text: &str) -> String {
        let mut folder = Folder::new(Vec::new());
        folder.fold(text);
        String::from_utf8(folder.sink).unwrap()
    }

    // ---- categories ---------------------------------------------------------------

    #[test]
    fn category_ids_round_trip() {
        for category in Category::ALL {
            let id = category.as_str();
            assert_eq!(Category::parse(id), Some(category));
            assert_eq!(id.parse::<Category>(), Ok(category));
            assert_eq!(category.to_string(), id);
            let json = serde_json::to_string(&category).unwrap();
            assert_eq!(json, format!("\"{id}\""));
            assert_eq!(serde_json::from_str::<Category>(&json).unwrap(), category);
        }
        assert_eq!(
            serde_json::to_string(&Category::FoodDelivery).unwrap(),
            "\"food_delivery\""
        );
        assert!("Groceries".parse::<Category>().is_err());
        assert!(
            Category::ALL.len() < 32,
            "categories are kept in a u32 bit set"
        );
    }

    // ---- normalisation ------------------------------------------------------------

    #[test]
    fn normalisation_folds_case_diacritics_and_punctuation() {
        assert_eq!(normalised("Rīgas satiksme"), "rigas satiksme");
        assert_eq!(normalised("ĒŠÕŪĄÖ ēšõūąö"), "esouao esouao");
        assert_eq!(normalised("Asta Jankauskienė"), "asta jankauskiene");
        assert_eq!(
            normalised("SIA Rīgas Tehnoloģijas"),
            "sia rigas tehnologijas"
        );
        assert_eq!(normalised("OÜ Tallinna Tarkvara"), "ou tallinna tarkvara");
        assert_eq!(normalised("Straße Łódź"), "strasse lodz");
        assert_eq!(normalised("BOLT.EU/O/2403"), "bolt eu o 2403");
        assert_eq!(normalised("McDonald's  --  Kaunas"), "mcdonalds kaunas");
        assert_eq!(normalised("McDonald\u{2019}s"), "mcdonalds");
        // Decomposed (NFD) text folds like composed text.
        assert_eq!(normalised("Bite\u{0307}"), normalised("Bitė"));
        // Letters without an ASCII fold stay part of their word.
        assert_eq!(normalised("teoя"), "teo_");
        assert_eq!(normalised("→ ★ €"), " ");
    }

    // ---- Baltic merchants, by keyword and by MCC ----------------------------------

    #[test]
    fn baltic_merchants_by_name() {
        let cases = [
            ("MAXIMA", Category::Groceries),
            ("RIMI", Category::Groceries),
            ("IKI", Category::Groceries),
            ("LIDL", Category::Groceries),
            ("SELVER", Category::Groceries),
            ("PRISMA", Category::Groceries),
            ("CIRCLE K", Category::Fuel),
            ("VIADA", Category::Fuel),
            ("NESTE", Category::Fuel),
            ("VIRSI", Category::Fuel),
            ("ALEXELA", Category::Fuel),
            ("CAMELIA", Category::Health),
            ("EUROVAISTINE", Category::Health),
            ("BENU", Category::Health),
            ("APOTHEKA", Category::Health),
            ("MENESS APTIEKA", Category::Health),
            ("IGNITIS", Category::Utilities),
            ("ELEKTRUM", Category::Utilities),
            ("ELEKTRUM EESTI", Category::Utilities),
            ("TELIA", Category::Telecom),
            ("TELE2", Category::Telecom),
            ("BITE", Category::Telecom),
            ("LMT", Category::Telecom),
            ("ELISA", Category::Telecom),
            ("Forto Dvaras", Category::Restaurants),
            ("Olde Hansa", Category::Restaurants),
            ("Rataskaevu 16", Category::Restaurants),
            ("F-hoone", Category::Restaurants),
            ("SPOTIFY", Category::Entertainment),
            ("NETFLIX.COM", Category::Entertainment),
            ("AMAZON.COM", Category::Shopping),
            ("UBER TRIP", Category::Transport),
            ("TFL TRAVEL CHARGE", Category::Transport),
        ];
        for (merchant, expected) in cases {
            let text = format!("Card payment {merchant}, Vilnius *1234");
            assert_eq!(cat(debit(merchant, &text)), expected, "{merchant}");
            // The name alone and the remittance alone are each enough.
            assert_eq!(cat(debit(merchant, "")), expected, "{merchant} (name)");
            assert_eq!(cat(debit("", &text)), expected, "{merchant} (remittance)");
        }
    }

    #[test]
    fn sandbox_card_codes() {
        let cases = [
            ("MAXIMA", "5411", Category::Groceries),
            ("CIRCLE K", "5541", Category::Fuel),
            ("BOLT.EU", "4121", Category::Transport),
            ("Lokys", "5812", Category::Restaurants),
            ("BENU", "5912", Category::Health),
            ("IGNITIS", "4900", Category::Utilities),
            ("TELIA", "4814", Category::Telecom),
            ("SPOTIFY", "4899", Category::Entertainment),
            ("Swedbank ATM Vilnius", "6011", Category::Cash),
            ("TFL TRAVEL CHARGE", "4111", Category::Transport),
            ("AMAZON UK", "5942", Category::Shopping),
            ("STEAM PURCHASE", "5816", Category::Entertainment),
            ("airBaltic", "3286", Category::Travel),
            ("UNKNOWN SHOP", "5999", Category::Shopping),
        ];
        for (merchant, mcc, expected) in cases {
            let decision = rules().explain(&card(merchant, mcc));
            assert_eq!(decision.category, expected, "{merchant} {mcc}");
        }
    }

    // ---- precedence ---------------------------------------------------------------

    #[test]
    fn mcc_beats_keywords() {
        // The text says groceries, the card network says fuel (a MAXIMA fuel station).
        let decision = rules().explain(&card("MAXIMA DEGALINE", "5541"));
        assert_eq!(decision.category, Category::Fuel);
        assert_eq!(decision.basis, Basis::Mcc(5541));
        // Without the code, the keyword decides.
        assert_eq!(cat(debit("MAXIMA", "")), Category::Groceries);
        // A card refund keeps the merchant's category.
        let refund = CategoryInput {
            direction: Direction::Credit,
            ..card("RIMI", "5411")
        };
        assert_eq!(cat(refund), Category::Groceries);
        // Codes the rules do not map, and malformed codes, fall through to keywords.
        assert_eq!(cat(card("RIMI", "0001")), Category::Groceries);
        assert_eq!(cat(card("RIMI", "54x1")), Category::Groceries);
        assert_eq!(cat(card("RIMI", "54111")), Category::Groceries);
        assert_eq!(cat(card("RIMI", "")), Category::Groceries);
        // A code sent as a number without leading zeros is still a code.
        let c = Categoriser::from_json(
            r#"{"version":1,"mcc":[{"category":"health","codes":["0742"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.categorise(&card("Vet", "742")), Category::Health);
    }

    #[test]
    fn wolt_is_food_delivery_not_transport() {
        assert_eq!(
            cat(debit("WOLT", "Card payment WOLT, Vilnius")),
            Category::FoodDelivery
        );
        // The sandbox charges Wolt with 5814 (fast food): the keyword refines the code.
        let decision = rules().explain(&card("WOLT", "5814"));
        assert_eq!(decision.category, Category::FoodDelivery);
        assert_eq!(
            decision.basis,
            Basis::Keyword {
                keyword: "wolt",
                refined_mcc: Some(5814)
            }
        );
        // A refund keeps the refined category, as a refund keeps its MCC category.
        let refund = CategoryInput {
            direction: Direction::Credit,
            ..card("WOLT", "5814")
        };
        assert_eq!(cat(refund), Category::FoodDelivery);
        // Without a code, Wolt paying out to a courier is income, not food delivery.
        assert_eq!(
            cat(credit("Wolt Lietuva", "Courier payout")),
            Category::Income
        );
        // A refinement does not reach beyond the categories it names.
        assert_eq!(cat(card("WOLT", "5411")), Category::Groceries);
        // Other restaurants keep their code's category.
        assert_eq!(cat(card("Lokys", "5812")), Category::Restaurants);
    }

    #[test]
    fn bolt_is_transport_but_bolt_food_is_food_delivery() {
        assert_eq!(cat(debit("Bolt", "Trip 12.03")), Category::Transport);
        assert_eq!(cat(debit("BOLT.EU", "")), Category::Transport);
        assert_eq!(
            cat(debit("Bolt Food", "Order 7781")),
            Category::FoodDelivery
        );
        assert_eq!(
            cat(debit("BOLT", "BOLT FOOD order")),
            Category::FoodDelivery
        );
        assert_eq!(cat(debit("bolt-food", "")), Category::FoodDelivery);
        assert_eq!(cat(card("BOLT.EU", "4121")), Category::Transport);
        assert_eq!(cat(card("Bolt Food", "4121")), Category::FoodDelivery);
        assert_eq!(cat(card("Bolt Food", "5812")), Category::FoodDelivery);
        // "bolt food" must be one phrase within one field: not across name and remittance.
        assert_eq!(cat(debit("Bolt", "Food")), Category::Transport);
    }

    #[test]
    fn keywords_match_whole_words_only() {
        // The seed matched "teo" inside "Teodoras" and called a friend a utility.
        assert_eq!(cat(debit("Teodoras Petrauskas", "Skola")), Category::Other);
        assert_eq!(cat(debit("TEO LT", "Sąskaita")), Category::Telecom);
        assert_eq!(cat(debit("Mateo", "")), Category::Other);
        assert_eq!(cat(debit("Rimiene", "")), Category::Other);
        assert_eq!(cat(debit("Bolton Ltd", "")), Category::Other);
        assert_eq!(cat(debit("Maximalist design", "")), Category::Other);
        // Non-Latin letters glued to a keyword are part of the word too.
        assert_eq!(cat(debit("teoя", "")), Category::Other);
        // Digits and punctuation around a keyword are fine.
        assert_eq!(cat(debit("", "PIRKINYS*IKI,VILNIUS")), Category::Groceries);
        // Matches of overlapping keywords share separators ("rimi" and "maxima").
        let decision = rules().explain(&debit("", "x rimi maxima y"));
        assert_eq!(decision.category, Category::Groceries);
        assert!(matches!(
            decision.basis,
            Basis::Keyword {
                keyword: "maxima",
                ..
            }
        ));
    }

    #[test]
    fn diacritics_fold_both_ways() {
        for text in [
            "Rīgas satiksme",
            "RIGAS SATIKSME",
            "rigas  satiksme",
            "E-talons, Rīgas Satiksme SIA",
        ] {
            assert_eq!(cat(debit("", text)), Category::Transport, "{text}");
        }
        // Keywords written without diacritics match text with them, and vice versa.
        assert_eq!(cat(debit("Eurovaistinė", "")), Category::Health);
        assert_eq!(cat(debit("BITĖ Lietuva", "")), Category::Telecom);
        assert_eq!(cat(debit("Südameapteek", "")), Category::Health);
        assert_eq!(cat(debit("SUDAMEAPTEEK", "")), Category::Health);
        assert_eq!(cat(debit("Mēness aptieka", "")), Category::Health);
        // A landlord with diacritics in the name; the remittance says rent.
        assert_eq!(
            cat(debit("Asta Jankauskienė", "Buto nuoma 2025-03")),
            Category::Rent
        );
        assert_eq!(cat(debit("Pēteris Liepa", "Dzīvokļa īre")), Category::Rent);
        assert_eq!(cat(debit("Mari Kask", "Korteri üür märts")), Category::Rent);
        assert_eq!(
            cat(debit("Jonas Petraitis", "Rent 2025-03")),
            Category::Rent
        );
    }

    #[test]
    fn priority_then_length_then_order() {
        // Same priority: the longer keyword wins.
        assert_eq!(cat(debit("Ignitis ON", "EV charging")), Category::Fuel);
        assert_eq!(cat(debit("Ignitis", "")), Category::Utilities);
        assert_eq!(
            cat(debit("", "Automobilių nuoma Vilnius")),
            Category::Travel
        );
        // Weak generic words lose to specific ones even when longer.
        assert_eq!(
            cat(debit("Jonas Petraitis", "Rent transfer")),
            Category::Rent
        );
        assert_eq!(cat(debit("TELIA", "Monthly fee")), Category::Telecom);
        assert_eq!(cat(debit("Swedbank", "Monthly fee")), Category::Fees);
        // Ties are broken by the rule listed first.
        let c = Categoriser::from_json(
            r#"{"version":1,"keywords":[
                {"category":"shopping","words":["alpha"]},
                {"category":"travel","words":["omega"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.categorise(&debit("omega", "alpha")), Category::Shopping);
        assert_eq!(c.categorise(&debit("alpha", "omega")), Category::Shopping);
        let c = Categoriser::from_json(
            r#"{"version":1,"keywords":[
                {"category":"shopping","words":["alpha"]},
                {"category":"travel","words":["omega"],"priority":1}]}"#,
        )
        .unwrap();
        assert_eq!(c.categorise(&debit("omega", "alpha")), Category::Travel);
    }

    // ---- income and sign ----------------------------------------------------------

    #[test]
    fn income_by_sign() {
        assert_eq!(
            cat(credit("UAB Baltic Software", "SALARY 2025-03")),
            Category::Salary
        );
        assert_eq!(
            cat(credit("SIA Rīgas Tehnoloģijas", "Darba alga 03/2025")),
            Category::Salary
        );
        assert_eq!(
            cat(credit("UAB Vilniaus Logistika", "Atlyginimas už kovą")),
            Category::Salary
        );
        assert_eq!(
            cat(credit("OÜ Tallinna Tarkvara", "Palk märts")),
            Category::Salary
        );
        assert_eq!(
            cat(credit("AS Põhja Logistika", "Töötasu")),
            Category::Salary
        );
        // Other credits are income; salary needs a salary keyword.
        assert_eq!(
            cat(credit("Stripe Payments Europe Ltd", "Invoice 2025-03")),
            Category::Income
        );
        assert_eq!(
            cat(credit("UAB Baltic Software", "Bonus")),
            Category::Income
        );
        assert_eq!(
            cat(credit("Alpha Bankas", "Interest 2025-03")),
            Category::Income
        );
        // Spending rules do not apply to credits: a payout from Bolt or Maxima is income.
        assert_eq!(
            cat(credit("Bolt Operations OU", "Driver payout")),
            Category::Income
        );
        assert_eq!(cat(credit("UAB MAXIMA LT", "Bonus")), Category::Income);
        // Rent received is income, rent paid is rent.
        assert_eq!(
            cat(credit("Jonas Petraitis", "Rent 2025-03")),
            Category::Income
        );
        // Salary keywords do not apply to debits.
        assert_eq!(
            cat(debit("Jonas", "Salary advance repayment")),
            Category::Other
        );
        // Transfers between one's own accounts go both ways.
        assert_eq!(
            cat(credit("Rūta Kazlauskienė", "Savings 2025-03")),
            Category::Transfers
        );
        assert_eq!(
            cat(debit("Rūta Kazlauskienė", "Savings 2025-03")),
            Category::Transfers
        );
        // Cash both ways.
        assert_eq!(cat(debit("", "ATM withdrawal Vilnius")), Category::Cash);
    }

    #[test]
    fn other_is_the_fallback() {
        let decision = rules().explain(&debit("Jonas Jonaitis", "Už bilietus"));
        assert_eq!(decision.category, Category::Other);
        assert_eq!(decision.basis, Basis::Fallback);
        let empty = CategoryInput {
            counterparty: None,
            remittance: None,
            merchant_category_code: None,
            direction: Direction::Debit,
        };
        assert_eq!(cat(empty), Category::Other);
        let empty_credit = CategoryInput {
            direction: Direction::Credit,
            ..empty
        };
        assert_eq!(rules().explain(&empty_credit).basis, Basis::Credit);
    }

    #[test]
    fn from_transaction_picks_the_counterparty_by_sign() {
        let eur = |s: &str| Money::parse(s, Currency::EUR).unwrap();
        let mut tx: Transaction = serde_json::from_value(serde_json::json!({
            "transactionId": "t1", "entryReference": null, "state": "booked",
            "bookingDate": "2025-03-25", "valueDate": null,
            "amount": {"amount": "-12.30", "currency": "EUR"},
            "creditorName": "RIMI", "creditorIban": null,
            "debtorName": "Rūta Kazlauskienė", "debtorIban": null,
            "remittance": "Card payment", "merchantCategoryCode": null,
            "bankTransactionCode": null
        }))
        .unwrap();
        let c = rules();
        assert_eq!(
            CategoryInput::from_transaction(&tx).counterparty,
            Some("RIMI")
        );
        assert_eq!(c.categorise_transaction(&tx), Category::Groceries);

        tx.amount = eur("2500.00");
        tx.creditor_name = Some("Rūta Kazlauskienė".into());
        tx.debtor_name = Some("UAB Baltic Software".into());
        tx.remittance = Some("SALARY 2025-03".into());
        let input = CategoryInput::from_transaction(&tx);
        assert_eq!(input.counterparty, Some("UAB Baltic Software"));
        assert_eq!(input.direction, Direction::Credit);
        assert_eq!(c.categorise_transaction(&tx), Category::Salary);

        tx.debtor_name = None;
        assert_eq!(
            CategoryInput::from_transaction(&tx).counterparty,
            Some("Rūta Kazlauskienė")
        );
        tx.amount = Money::zero(Currency::EUR);
        assert_eq!(Direction::of(&tx.amount), Direction::Debit);
        tx.merchant_category_code = Some("5411".into());
        assert_eq!(c.categorise_transaction(&tx), Category::Groceries);
    }

    // ---- rules files --------------------------------------------------------------

    #[test]
    fn builtin_rules_compile_and_cover_every_spending_category() {
        let c = Categoriser::builtin();
        let mut covered: Vec<Category> = c.keywords.iter().map(|k| k.category).collect();
        covered.extend(c.mcc.iter().flatten());
        for category in Category::ALL {
            if category != Category::Other {
                assert!(covered.contains(&category), "no rule for {category}");
            }
        }
        assert!(format!("{c:?}").contains("keywords"));
        fn shareable<T: Send + Sync + Clone>(_: &T) {}
        shareable(&c);
    }

    #[test]
    fn operator_file_extends_and_overrides_the_builtin_rules() {
        let json = r#"{
            "version": 1,
            "extends_builtin": true,
            "mcc": [{"category": "shopping", "codes": ["5411"]}],
            "keywords": [
                {"category": "health", "sign": "debit", "words": ["Gintarinė Vaistinė", "Ochota"]},
                {"category": "entertainment", "sign": "debit", "words": ["RIMI"]},
                {"category": "fees", "sign": "debit", "words": ["wolt"], "refines": ["restaurants"]}
            ]
        }"#;
        let c = Categoriser::from_json(json).unwrap();
        // Added keyword.
        assert_eq!(c.categorise(&debit("OCHOTA", "")), Category::Health);
        // Same keyword and sign: the operator's rule replaces the built-in one.
        assert_eq!(c.categorise(&debit("RIMI", "")), Category::Entertainment);
        assert_eq!(c.categorise(&card("WOLT", "5814")), Category::Fees);
        // Same code: the operator's mapping replaces the built-in one.
        assert_eq!(c.categorise(&card("Anything", "5411")), Category::Shopping);
        // Everything else is inherited.
        assert_eq!(c.categorise(&debit("MAXIMA", "")), Category::Groceries);
        assert_eq!(c.categorise(&card("NESTE", "5541")), Category::Fuel);
        assert_eq!(
            c.categorise(&debit("Bolt Food", "")),
            Category::FoodDelivery
        );
        assert_eq!(
            cat(debit("RIMI", "")),
            Category::Groceries,
            "built-ins unchanged"
        );

        // Without extends_builtin, the file replaces the built-in rules.
        let only = Categoriser::from_json(
            r#"{"version":1,"keywords":[{"category":"health","words":["ochota"]}]}"#,
        )
        .unwrap();
        assert_eq!(only.categorise(&debit("OCHOTA", "")), Category::Health);
        assert_eq!(only.categorise(&debit("MAXIMA", "")), Category::Other);
        assert_eq!(only.categorise(&card("MAXIMA", "5411")), Category::Other);
    }

    #[test]
    fn rules_from_a_file() {
        let dir = std::env::temp_dir().join(format!("category-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"version":1,"extends_builtin":true,"keywords":[{"category":"travel","words":["Tallink Silja"]}]}"#,
        )
        .unwrap();
        let c = Categoriser::from_path(&good).unwrap();
        assert_eq!(c.categorise(&debit("TALLINK SILJA", "")), Category::Travel);

        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            r#"{"version":1,"keywords":[{"category":"travel","word":["x"]}]}"#,
        )
        .unwrap();
        let error = Categoriser::from_path(&bad).unwrap_err().to_string();
        assert!(
            error.contains("bad.json") && error.contains("unknown field"),
            "{error}"
        );

        let missing = dir.join("missing.json");
        let error = Categoriser::from_path(&missing).unwrap_err();
        assert!(matches!(error, RulesError::Read { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_rules_are_rejected_with_a_clear_error() {
        let cases = [
            ("not json", "invalid category rules"),
            (r#"{"keywords":[]}"#, "missing field `version`"),
            (r#"{"version":2}"#, "unsupported category rules version 2"),
            (r#"{"version":1,"colour":"red"}"#, "unknown field `colour`"),
            (
                r#"{"version":1,"keywords":[{"category":"food","words":["x"]}]}"#,
                "unknown variant `food`",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":["x"],"sign":"both"}]}"#,
                "unknown variant `both`",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":["x"],"refine":["transport"]}]}"#,
                "unknown field `refine`",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":[]}]}"#,
                "the fuel rule has no words",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":[" -- "]}]}"#,
                "keyword ' -- ' of the fuel rule has no letters or digits",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":["Лукойл"]}]}"#,
                "outside the Latin alphabet",
            ),
            (
                r#"{"version":1,"keywords":[{"category":"fuel","words":["Neste"]},
                    {"category":"shopping","words":["NESTE"]}]}"#,
                "keyword 'neste' (any sign) appears twice (fuel and shopping)",
            ),
            (
                r#"{"version":1,"mcc":[{"category":"fuel","codes":["554"]}]}"#,
                "invalid merchant category code '554' in the fuel rule",
            ),
            (
                r#"{"version":1,"mcc":[{"category":"fuel","codes":["5599-5500"]}]}"#,
                "invalid merchant category code '5599-5500'",
            ),
            (
                r#"{"version":1,"mcc":[{"category":"fuel","codes":["5541"]},
                    {"category":"travel","codes":["5500-5599"]}]}"#,
                "merchant category code 5541 is mapped twice (fuel and travel)",
            ),
            (
                r#"{"version":1,"mcc":[{"category":"fuel","codes":[]}]}"#,
                "the fuel rule has no codes",
            ),
        ];
        for (json, needle) in cases {
            let error = Categoriser::from_json(json).unwrap_err().to_string();
            assert!(error.contains(needle), "{json}\n  gave: {error}");
        }
        // The same keyword for debits and for credits is two rules, not a duplicate.
        let c = Categoriser::from_json(
            r#"{"version":1,"keywords":[
                {"category":"transport","sign":"debit","words":["bolt"]},
                {"category":"salary","sign":"credit","words":["bolt"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.categorise(&debit("Bolt", "")), Category::Transport);
        assert_eq!(c.categorise(&credit("Bolt", "")), Category::Salary);
    }

    // ---- properties ---------------------------------------------------------------

    fn builtin_keywords() -> &'static [Box<str>] {
        &rules().words
    }

    /// Spells an ASCII keyword differently: random case and, where a Baltic letter has
    /// the same base letter, sometimes with its diacritic (composed or decomposed).
    fn respell(keyword: &str, choices: &[u8]) -> String {
        let mut out = String::new();
        for (i, c) in keyword.chars().enumerate() {
            let choice = choices[i % choices.len()];
            let accented = match c {
                'a' => ['ā', 'ą', 'Ä'],
                'c' => ['č', 'Č', 'ç'],
                'e' => ['ē', 'ė', 'ę'],
                'i' => ['ī', 'į', 'Í'],
                'o' => ['õ', 'ö', 'Ō'],
                's' => ['š', 'Š', 'ş'],
                'u' => ['ū', 'ų', 'Ü'],
                'z' => ['ž', 'Ž', 'ź'],
                'n' => ['ņ', 'Ņ', 'ñ'],
                'l' => ['ļ', 'Ł', 'ľ'],
                _ => [c, c, c],
            };
            match choice % 6 {
                0 => out.push(c),
                1 => out.push(c.to_ascii_uppercase()),
                2..=4 => out.push(accented[usize::from(choice % 6 - 2)]),
                _ if c.is_ascii_alphabetic() => {
                    out.push(c);
                    out.push('\u{0301}'); // combining acute accent
                }
                _ => out.push(c),
            }
        }
        out
    }

    fn direction() -> impl Strategy<Value = Direction> {
        prop_oneof![Just(Direction::Debit), Just(Direction::Credit)]
    }

    /// The best rule by brute force: every padded keyword searched at every position of
    /// the whole normalised text, without the DFA and without skipping words.
    fn reference<'c>(
        c: &'c Categoriser,
        input: &CategoryInput<'_>,
        filter: Filter,
    ) -> Option<(Category, &'c str)> {
        let mut folder = Folder::new(Vec::new());
        folder.put(SEP);
        folder.fold(input.counterparty.unwrap_or_default());
        folder.put(SEP);
        folder.put(FIELD_SEP);
        folder.put(SEP);
        folder.fold(input.remittance.unwrap_or_default());
        folder.put(SEP);
        let text = folder.sink;
        let mut best: Option<&CompiledKeyword> = None;
        for rule in &c.keywords {
            let padded = format!(" {} ", c.words[rule.word as usize]);
            let applies = match filter {
                Filter::Sign(direction) => rule.sign.allows(direction),
                Filter::Refines(set) => rule.refines & set != 0,
            };
            if applies
                && text.windows(padded.len()).any(|w| w == padded.as_bytes())
                && best.is_none_or(|b| rule.rank() > b.rank())
            {
                best = Some(rule);
            }
        }
        best.map(|rule| (rule.category, &*c.words[rule.word as usize]))
    }

    /// Text made of keywords (plain or respelled), arbitrary snippets and separators,
    /// sometimes glued together.
    fn keyword_soup() -> impl Strategy<Value = String> {
        let token = (
            any::<prop::sample::Index>(),
            0..5u8,
            "\\PC{0,6}",
            prop::collection::vec(any::<u8>(), 1..6),
        );
        prop::collection::vec(token, 0..10).prop_map(|tokens| {
            let keywords = builtin_keywords();
            let mut text = String::new();
            for (index, kind, snippet, choices) in tokens {
                match kind {
                    0 => text.push_str(&index.get(keywords)[..]),
                    1 => text.push_str(&respell(&index.get(keywords)[..], &choices)),
                    2 => text.push_str(&snippet),
                    3 => text.push_str([" ", ".", "-", "'", "  ", "/"][index.index(6)]),
                    _ => text.push(' '),
                }
            }
            text
        })
    }

    proptest! {
        #[test]
        fn the_dfa_walk_finds_what_brute_force_finds(
            name in keyword_soup(),
            text in keyword_soup(),
            direction in direction(),
            refined in any::<prop::sample::Index>(),
        ) {
            let c = rules();
            let input = CategoryInput {
                counterparty: Some(&name),
                remittance: Some(&text),
                merchant_category_code: None,
                direction,
            };
            let refined = Category::ALL[refined.index(Category::ALL.len())].bit();
            for filter in [Filter::Sign(direction), Filter::Refines(refined)] {
                let walked = c
                    .best_keyword(&input, filter)
                    .map(|rule| (rule.category, &*c.words[rule.word as usize]));
                prop_assert_eq!(walked, reference(c, &input, filter));
            }
        }

        #[test]
        fn never_panics_and_is_deterministic(
            name in proptest::option::of(any::<String>()),
            text in proptest::option::of(any::<String>()),
            mcc in proptest::option::of("[0-9]{0,5}|\\PC{0,6}"),
            direction in direction(),
        ) {
            let c = rules();
            let input = CategoryInput {
                counterparty: name.as_deref(),
                remittance: text.as_deref(),
                merchant_category_code: mcc.as_deref(),
                direction,
            };
            let first = c.explain(&input);
            prop_assert_eq!(first, c.explain(&input));
            prop_assert_eq!(first.category, other_copy().categorise(&input));
            // Only credits fall back to income, only debits to other.
            match first.basis {
                Basis::Credit => prop_assert_eq!((first.category, direction), (Category::Income, Direction::Credit)),
                Basis::Fallback => prop_assert_eq!((first.category, direction), (Category::Other, Direction::Debit)),
                Basis::Mcc(_) | Basis::Keyword { .. } => {}
            }
        }

        #[test]
        fn case_and_diacritics_do_not_change_the_category(
            index in any::<prop::sample::Index>(),
            choices in prop::collection::vec(any::<u8>(), 1..16),
            before in "[A-Za-z0-9 .,*/-]{0,30}",
            after in "[A-Za-z0-9 .,*/-]{0,30}",
            direction in direction(),
        ) {
            let keywords = builtin_keywords();
            let keyword = index.get(keywords);
            let respelled = respell(keyword, &choices);
            prop_assert_eq!(normalised(&respelled), &**keyword);
            let c = rules();
            let plain = format!("{before} {keyword} {after}");
            let variant = format!("{before} {respelled} {after}");
            let input = |text| CategoryInput {
                counterparty: Some("Card payment"),
                remittance: Some(text),
                merchant_category_code: None,
                direction,
            };
            prop_assert_eq!(c.categorise(&input(&plain)), c.categorise(&input(&variant)));
        }

        #[test]
        fn keywords_glued_to_other_letters_do_not_match(
            index in any::<prop::sample::Index>(),
            glue in "[a-z]{1,3}",
            direction in direction(),
        ) {
            let keywords = builtin_keywords();
            let keyword = index.get(keywords);
            let c = rules();
            for text in [format!("{glue}{keyword}"), format!("{keyword}{glue}")] {
                let decision = c.explain(&CategoryInput {
                    counterparty: None,
                    remittance: Some(&text),
                    merchant_category_code: None,
                    direction,
                });
                if let Basis::Keyword { keyword: matched, .. } = decision.basis {
                    prop_assert_ne!(matched, &**keyword, "{}", text);
                }
            }
            // And alone, each keyword matches itself for some sign.
            let alone = |direction| c.explain(&CategoryInput {
                counterparty: Some(keyword), remittance: None,
                merchant_category_code: None, direction,
            }).basis;
            let matched_alone = [alone(Direction::Debit), alone(Direction::Credit)]
                .into_iter()
                .any(|b| matches!(b, Basis::Keyword { keyword: k, .. } if k == &**keyword));
            prop_assert!(matched_alone, "{}", keyword);
        }
    }
}

//! The banks (ASPSPs) the sandbox simulates. The bank id is the first path segment.

/// How the bank names the SCA link in its 201 answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaLink {
    /// `_links.scaRedirect` (Redirect SCA approach).
    Redirect,
    /// `_links.scaOAuth` (OAuth SCA approach); the href is the same SCA page.
    OAuth,
}

#[derive(Debug)]
pub struct Bank {
    pub id: &'static str,
    pub name: &'static str,
    /// ISO 3166 country code, also the IBAN country.
    pub country: &'static str,
    pub bic: &'static str,
    /// National bank code used inside generated IBANs.
    pub bank_code: &'static str,
    pub payment_products: &'static [&'static str],
    pub sca_link: ScaLink,
    /// Name of the bank's capital-city branch, used in card payment texts.
    pub city: &'static str,
}

impl Bank {
    pub fn supports_product(&self, product: &str) -> bool {
        self.payment_products.contains(&product)
    }

    /// The value of the `ASPSP-SCA-Approach` response header.
    pub fn sca_approach(&self) -> &'static str {
        match self.sca_link {
            ScaLink::Redirect => "REDIRECT",
            ScaLink::OAuth => "OAUTH",
        }
    }

    /// The `_links` key of the SCA link.
    pub fn sca_link_name(&self) -> &'static str {
        match self.sca_link {
            ScaLink::Redirect => "scaRedirect",
            ScaLink::OAuth => "scaOAuth",
        }
    }
}

pub const SEPA_CREDIT_TRANSFERS: &str = "sepa-credit-transfers";
pub const INSTANT_SEPA_CREDIT_TRANSFERS: &str = "instant-sepa-credit-transfers";
pub const CROSS_BORDER_CREDIT_TRANSFERS: &str = "cross-border-credit-transfers";

pub static BANKS: [Bank; 3] = [
    Bank {
        id: "lt-alpha",
        name: "Alpha Bankas",
        country: "LT",
        bic: "ALPHLT2X",
        bank_code: "74500",
        payment_products: &[
            SEPA_CREDIT_TRANSFERS,
            INSTANT_SEPA_CREDIT_TRANSFERS,
            CROSS_BORDER_CREDIT_TRANSFERS,
        ],
        sca_link: ScaLink::Redirect,
        city: "Vilnius",
    },
    Bank {
        id: "lv-baltija",
        name: "Baltija Banka",
        country: "LV",
        bic: "BALTLV2X",
        bank_code: "BALT",
        payment_products: &[SEPA_CREDIT_TRANSFERS, INSTANT_SEPA_CREDIT_TRANSFERS],
        sca_link: ScaLink::Redirect,
        city: "Riga",
    },
    Bank {
        id: "ee-pohja",
        name: "Põhja Pank",
        country: "EE",
        bic: "POHJEE2X",
        bank_code: "42",
        payment_products: &[SEPA_CREDIT_TRANSFERS],
        sca_link: ScaLink::OAuth,
        city: "Tallinn",
    },
];

/// Looks a bank up by its id (path prefix).
pub fn bank(id: &str) -> Option<&'static Bank> {
    BANKS.iter().find(|b| b.id == id)
}

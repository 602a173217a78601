//! Payments (SPEC §5): money, the records mirroring Stripe objects, how Stripe objects are
//! applied to them ([`reconcile`], shared by the webhook and the sync), and receipts.

pub mod money;
pub mod receipt;
pub mod reconcile;
pub mod records;

pub use money::{Currency, MAX_AMOUNT, check_amount};
pub use records::{
    Charge, CustomerRecord, InvoiceRecord, PaymentRecord, PaymentStatus, SubscriptionItem,
    SubscriptionRecord,
};

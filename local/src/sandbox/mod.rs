//! Provider sandboxes: stand-ins for the providers on the runner's own address, speaking
//! their wire formats and sending correctly signed webhooks back, so a local send goes all
//! the way to `delivered`. Real provider keys in the environment switch them off.

pub mod faults;
pub mod sendgrid;
pub mod stripe;
pub mod twilio;

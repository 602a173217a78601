# `sam build` for Herald (issue 22): every function in template.yaml has
# `Metadata: BuildMethod: makefile`, so SAM runs, once per function,
#
#   make --makefile <this file> build-<LogicalId>   with ARTIFACTS_DIR=.aws-sam/build/<LogicalId>
#
# and packages what the target leaves in ARTIFACTS_DIR. The Makefile must sit at the
# function's CodeUri (`.`, the workspace root) and be named `Makefile`; each target copies
# its artifacts into $(ARTIFACTS_DIR). AWS SAM Developer Guide, "Building Lambda functions
# with custom runtimes in AWS SAM":
# https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/building-custom-runtimes.html
#
# Every build- target depends on ONE workspace build, `cargo lambda build --release --arm64` of the
# herald-functions package: the first target SAM runs compiles and links every function, and
# for the others cargo finds everything fresh and returns in about a second. Each target
# then copies its function's `bootstrap` (the arm64 binary, provided.al2023) to the artifact
# root, where Lambda and `sam local invoke` look for it.
#
# samconfig.toml sets `build_in_source = true` (`sam build --build-in-source`, supported by
# the makefile build method): SAM then runs make in the workspace itself instead of in a
# scratch copy of it, so the cargo target directory is the workspace's own and a rebuild is
# incremental. AWS SAM Developer Guide, "Default build with AWS SAM", section "Speed up build
# times by building your project in the source folder":
# https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/serverless-sam-cli-using-build.html#serverless-sam-cli-using-build-in-source
# and the `--build-in-source` option of
# https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-cli-command-reference-sam-build.html
# The recipe also changes into this file's own directory (SAM passes this file's path in the
# source tree even when it builds in a scratch copy), so the build shares the workspace's
# target directory either way.
#
# The targets work outside SAM too: `make build-EmailApiFunction ARTIFACTS_DIR=/tmp/out`.

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CARGO ?= cargo
# cargo's own rule: CARGO_TARGET_DIR if set (relative to where cargo runs, here ROOT), else
# the workspace's target/.
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(if $(filter /%,$(CARGO_TARGET_DIR)),$(CARGO_TARGET_DIR),$(ROOT)/$(CARGO_TARGET_DIR)),$(ROOT)/target)
LAMBDA_DIR := $(TARGET_DIR)/lambda

# Copies function $(1)'s binary to the artifact root as `bootstrap`.
define copy-bootstrap
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)" >&2; exit 1; }
	mkdir -p "$(ARTIFACTS_DIR)"
	cp "$(LAMBDA_DIR)/$(1)/bootstrap" "$(ARTIFACTS_DIR)/bootstrap"
endef

.PHONY: lambda-binaries
# Every function, as Lambda runs them (`cargo lambda` cross-compiles for arm64 with zig).
lambda-binaries:
	cd "$(ROOT)" && $(CARGO) lambda build --release --arm64 --locked -p herald-functions --lambda-dir "$(LAMBDA_DIR)"

# One target per function in template.yaml: build-<LogicalId> copies the binary named by the
# function's Metadata.BuildProperties.Binary (tests/tests/api/bundle_shape.rs checks both).
.PHONY: build-TemplatesApiFunction
build-TemplatesApiFunction: lambda-binaries
	$(call copy-bootstrap,templates-api)

.PHONY: build-AdminPageFunction
build-AdminPageFunction: lambda-binaries
	$(call copy-bootstrap,admin-page)

.PHONY: build-EventRecorderFunction
build-EventRecorderFunction: lambda-binaries
	$(call copy-bootstrap,event-recorder)

.PHONY: build-AuditApiFunction
build-AuditApiFunction: lambda-binaries
	$(call copy-bootstrap,audit-api)

.PHONY: build-OperationsApiFunction
build-OperationsApiFunction: lambda-binaries
	$(call copy-bootstrap,operations-api)

.PHONY: build-EmailApiFunction
build-EmailApiFunction: lambda-binaries
	$(call copy-bootstrap,email-api)

.PHONY: build-EmailWorkerFunction
build-EmailWorkerFunction: lambda-binaries
	$(call copy-bootstrap,email-worker)

.PHONY: build-BulkWorkerFunction
build-BulkWorkerFunction: lambda-binaries
	$(call copy-bootstrap,bulk-worker)

.PHONY: build-SendGridWebhookFunction
build-SendGridWebhookFunction: lambda-binaries
	$(call copy-bootstrap,sendgrid-webhook)

.PHONY: build-EmailStatusCheckFunction
build-EmailStatusCheckFunction: lambda-binaries
	$(call copy-bootstrap,email-status-check)

.PHONY: build-ReportsApiFunction
build-ReportsApiFunction: lambda-binaries
	$(call copy-bootstrap,reports-api)

.PHONY: build-ReportWorkerFunction
build-ReportWorkerFunction: lambda-binaries
	$(call copy-bootstrap,report-worker)

.PHONY: build-ReportCleanupFunction
build-ReportCleanupFunction: lambda-binaries
	$(call copy-bootstrap,report-cleanup)

.PHONY: build-PaymentsApiFunction
build-PaymentsApiFunction: lambda-binaries
	$(call copy-bootstrap,payments-api)

.PHONY: build-StripeWebhookFunction
build-StripeWebhookFunction: lambda-binaries
	$(call copy-bootstrap,stripe-webhook)

.PHONY: build-StripeSyncFunction
build-StripeSyncFunction: lambda-binaries
	$(call copy-bootstrap,stripe-sync)

.PHONY: build-SmsApiFunction
build-SmsApiFunction: lambda-binaries
	$(call copy-bootstrap,sms-api)

.PHONY: build-SmsWorkerFunction
build-SmsWorkerFunction: lambda-binaries
	$(call copy-bootstrap,sms-worker)

.PHONY: build-TwilioWebhookFunction
build-TwilioWebhookFunction: lambda-binaries
	$(call copy-bootstrap,twilio-webhook)

.PHONY: build-SmsStatusCheckFunction
build-SmsStatusCheckFunction: lambda-binaries
	$(call copy-bootstrap,sms-status-check)

.PHONY: build-ConsentApiFunction
build-ConsentApiFunction: lambda-binaries
	$(call copy-bootstrap,consent-api)

.PHONY: build-UnsubscribeFunction
build-UnsubscribeFunction: lambda-binaries
	$(call copy-bootstrap,unsubscribe)

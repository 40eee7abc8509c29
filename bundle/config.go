package bundle

import (
	"errors"
	"fmt"
	"time"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// PolicyConfig is the `policies:` section of the serve configuration.
type PolicyConfig struct {
	// Dir is a directory of .rego files and data.json/data.yaml files.
	Dir string `yaml:"dir"`
	// Bundle fetches an OPA bundle from a URL instead of reading Dir.
	Bundle BundleSourceConfig `yaml:"bundle"`
	// Decision is the path of the decision rule, e.g. envoy/authz/allow.
	Decision string `yaml:"decision"`
	// RegoVersion is "v1" (default) or "v0" for policies in the older syntax.
	RegoVersion string `yaml:"rego_version"`
	// Shadow is a candidate policy set evaluated beside this one, whose
	// answers never reach Envoy (SPEC §9; package decisionlog).
	Shadow *PolicyConfig `yaml:"shadow"`
	// AuthZENDecision is the decision rule of the AuthZEN API (SPEC §10),
	// e.g. authzen/allow (the default); its package holds the search rules.
	AuthZENDecision string `yaml:"authzen_decision"`
}

// BundleSourceConfig locates a signed policy bundle.
type BundleSourceConfig struct {
	// URL of the bundle, e.g. http://127.0.0.1:8282/v1/bundles/main.
	URL string `yaml:"url"`
	// PublicKeyFile is the PEM key the bundle signature must verify with.
	PublicKeyFile string `yaml:"public_key_file"`
	// TokenFile holds a bearer token sent when downloading the bundle.
	TokenFile string `yaml:"token_file"`
	// Poll is how often the bundle is polled for changes (default 10s).
	Poll time.Duration `yaml:"poll"`
}

// SetDefaults fills unset fields.
func (c *PolicyConfig) SetDefaults() {
	if c.Decision == "" {
		c.Decision = authz.DefaultDecision
	}
	if c.RegoVersion == "" {
		c.RegoVersion = "v1"
	}
	if c.AuthZENDecision == "" {
		c.AuthZENDecision = authz.DefaultAuthZENDecision
	}
	if c.Bundle.Poll == 0 {
		c.Bundle.Poll = 10 * time.Second
	}
	if c.Shadow != nil {
		if c.Shadow.Decision == "" {
			c.Shadow.Decision = c.Decision
		}
		c.Shadow.SetDefaults()
	}
}

// Validate reports every problem of the configuration.
func (c PolicyConfig) Validate() error {
	var errs []error
	if c.Dir == "" && c.Bundle.URL == "" {
		errs = append(errs, errors.New("policies: set dir or bundle.url"))
	}
	if c.Dir != "" && c.Bundle.URL != "" {
		errs = append(errs, errors.New("policies: set dir or bundle.url, not both"))
	}
	if c.Bundle.URL != "" && c.Bundle.PublicKeyFile == "" {
		errs = append(errs, errors.New("policies.bundle: public_key_file is required (unsigned bundles are refused)"))
	}
	if _, err := authz.DecisionRef(c.Decision); err != nil {
		errs = append(errs, fmt.Errorf("policies.decision: %w", err))
	}
	if _, err := authz.ParseRegoVersion(c.RegoVersion); err != nil {
		errs = append(errs, fmt.Errorf("policies.rego_version: %w", err))
	}
	if c.Bundle.Poll < 0 {
		errs = append(errs, fmt.Errorf("policies.bundle.poll: %v is negative", c.Bundle.Poll))
	}
	if c.Shadow != nil {
		if c.Shadow.Shadow != nil {
			errs = append(errs, errors.New("policies.shadow.shadow: a shadow policy has no shadow"))
		}
		if err := c.Shadow.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("policies.shadow: %w", err))
		}
	}
	return errors.Join(errs...)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TracingConfig is the `tracing:` section: OpenTelemetry spans per Check,
// exported over OTLP. Absent = no tracing.
type TracingConfig struct {
	// Address is the OTLP collector's host:port (default localhost:4317
	// for grpc, localhost:4318 for http).
	Address string `yaml:"address"`
	// Protocol is grpc (default) or http (OTLP/HTTP protobuf).
	Protocol string `yaml:"protocol"`
	// Insecure sends without TLS.
	Insecure bool `yaml:"insecure"`
	// ServiceName is the resource's service.name (default gatehouse).
	ServiceName string `yaml:"service_name"`
	// SamplePercentage of new traces recorded (default 100); a request's
	// sampled traceparent is followed.
	SamplePercentage *float64 `yaml:"sample_percentage"`
}

// SetDefaults fills unset fields.
func (c *TracingConfig) SetDefaults() {
	if c.Protocol == "" {
		c.Protocol = "grpc"
	}
	if c.Address == "" {
		c.Address = "localhost:4317"
		if c.Protocol == "http" {
			c.Address = "localhost:4318"
		}
	}
	if c.ServiceName == "" {
		c.ServiceName = "gatehouse"
	}
	if c.SamplePercentage == nil {
		p := 100.0
		c.SamplePercentage = &p
	}
}

// Validate reports a bad protocol, address or percentage.
func (c TracingConfig) Validate() error {
	var errs []error
	if c.Protocol != "grpc" && c.Protocol != "http" {
		errs = append(errs, fmt.Errorf("tracing.protocol: %q is not grpc or http", c.Protocol))
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("tracing.address: %q is not host:port", c.Address))
	}
	if p := c.SamplePercentage; p != nil && (*p < 0 || *p > 100) {
		errs = append(errs, fmt.Errorf("tracing.sample_percentage: %v is not between 0 and 100", *p))
	}
	return errors.Join(errs...)
}

// newTracerProvider builds the OTLP exporter and a provider batching
// spans to it (nothing is dialled until the first export).
func newTracerProvider(ctx context.Context, c TracingConfig, id string) (*sdktrace.TracerProvider, error) {
	var (
		exp *otlptrace.Exporter
		err error
	)
	switch c.Protocol {
	case "http":
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(c.Address)}
		if c.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	default:
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(c.Address)}
		if c.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", c.ServiceName),
		attribute.String("service.instance.id", id),
		attribute.String("service.version", version),
	)
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*c.SamplePercentage/100))),
	), nil
}

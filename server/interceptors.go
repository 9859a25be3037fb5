package server

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// statusUnary and statusStream apply toStatus to whatever a handler (or the
// authorizer) returns: handlers return domain errors, clients see codes.
func statusUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, toStatus(err)
}

func statusStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return toStatus(handler(srv, ss))
}

// observeUnary and observeStream count calls by method and final code.
func (d *Director) observeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	d.observe(info.FullMethod, start, err)
	return resp, err
}

func (d *Director) observeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	d.observe(info.FullMethod, start, err)
	return err
}

func (d *Director) observe(method string, start time.Time, err error) {
	code := status.Code(err)
	d.metrics.requests.WithLabelValues(method, code.String()).Inc()
	d.metrics.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	if err != nil {
		d.log.Debug("api call failed", "method", method, "code", code.String(), "err", err)
	}
}

// Package dataplane is the director's packet path.
package dataplane

package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		text  string
		width int
		want  string
	}{
		{"", 10, ""},
		{"one two three", 20, "one two three"},
		{"one two three", 7, "one two\nthree"},
		{"one  two\nthree", 8, "one two\nthree"},
		{"a longerthanwidth b", 5, "a\nlongerthanwidth\nb"},
	} {
		if diff := cmp.Diff(tc.want, wrap(tc.text, tc.width)); diff != "" {
			t.Errorf("wrap(%q, %d) (-want +got):\n%s", tc.text, tc.width, diff)
		}
	}
}

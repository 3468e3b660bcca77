package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/cli.md from the commands")

//go:generate go test -run TestCLIReference -update .

// TestCLIReference: docs/cli.md is what the commands say of themselves
// (usage, description, flags). After changing a command, regenerate it:
// go generate ./cmd/handoff (or go test -run TestCLIReference -update).
func TestCLIReference(t *testing.T) {
	var b bytes.Buffer
	writeCLIReference(&b, newRoot())
	const path = "../../docs/cli.md"
	if *updateDocs {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b.Bytes()) {
		t.Errorf("docs/cli.md is not what the commands say; run go generate ./cmd/handoff\n--- want\n%s", b.String())
	}
}

// writeCLIReference writes the Markdown reference of root's commands.
func writeCLIReference(w *bytes.Buffer, root *cobra.Command) {
	fmt.Fprintf(w, "# CLI reference\n\n")
	fmt.Fprintf(w, "Generated from the commands by `go generate ./cmd/handoff`; do not edit.\n")
	fmt.Fprintf(w, "`-c` defaults to `$HANDOFF_CONFIG`, then `/etc/handoff/handoff.yaml`. The\n")
	fmt.Fprintf(w, "commands that talk to a running daemon find its admin API as\n")
	fmt.Fprintf(w, "[the admin API reference](admin-api.md#how-the-cli-finds-the-daemon) says.\n\n")
	root.InitDefaultCompletionCmd() // as Execute adds it
	cmds := commands(root)
	fmt.Fprintf(w, "| command | does |\n|---|---|\n")
	for _, c := range cmds {
		fmt.Fprintf(w, "| [`%s`](#%s) | %s |\n", name(c), anchor(c), c.Short)
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "\n## %s\n\n", c.CommandPath())
		fmt.Fprintf(w, "```\n%s %s\n```\n\n", c.Parent().CommandPath(), c.Use)
		desc := c.Long
		if desc == "" {
			desc = c.Short
		}
		fmt.Fprintf(w, "%s\n", strings.TrimSpace(desc))
		if fl := c.LocalFlags().FlagUsages(); fl != "" {
			fmt.Fprintf(w, "\nFlags:\n\n```\n%s```\n", fl)
		}
	}
}

// commands lists c's available subcommands, depth first, each before its
// own subcommands.
func commands(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			out = append(out, s)
			out = append(out, commands(s)...)
		}
	}
	return out
}

// name is c's path below the root: "cluster status".
func name(c *cobra.Command) string {
	return strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
}

// anchor is the Markdown anchor of c's heading.
func anchor(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

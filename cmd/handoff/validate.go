package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
)

// validateResult is what validate --json prints.
type validateResult struct {
	File     string          `json:"file"`
	OK       bool            `json:"ok"`
	Services int             `json:"services"`
	Errors   []validateError `json:"errors"`
}

type validateError struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Message string `json:"message"`
}

func newValidateCmd() *cobra.Command {
	var path string
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:   "validate [-c FILE] [--json | -q]",
		Short: "Check a config; exit 1 listing every error as FILE:LINE:COL: message",
		Long: "Check a config file as run would load it: exit 0, or exit 1 listing every error as FILE:LINE:COL: message.\n" +
			"--json prints one JSON object (file, ok, services, errors with file, line, column and message) on stdout in both cases;\n" +
			"-q prints nothing when the file is valid (the errors still go to stderr).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := configPath(path)
			cfg, err := config.Load(p)
			if asJSON {
				res := validateResult{File: p, OK: err == nil, Errors: []validateError{}}
				if cfg != nil {
					res.Services = len(cfg.Services)
				}
				var es config.Errors
				switch {
				case errors.As(err, &es):
					for _, e := range es {
						res.Errors = append(res.Errors, validateError{File: e.File, Line: e.Line, Column: e.Column, Message: e.Msg})
					}
				case err != nil:
					res.Errors = append(res.Errors, validateError{File: p, Message: err.Error()})
				}
				b, _ := json.MarshalIndent(res, "", "  ")
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
				if err != nil {
					return exitError{code: 1}
				}
				return nil
			}
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
			}
			if !quiet {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d services)\n", p, len(cfg.Services))
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON, for scripts")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing when the config is valid")
	cmd.MarkFlagsMutuallyExclusive("json", "quiet")
	return cmd
}

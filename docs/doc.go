// Package docs holds handoff's user documentation (Markdown) and no code:
// its tests check that README.md and the pages link only within the
// repository, to files and headings that exist, and that the README stays
// short and maps every page.
package docs

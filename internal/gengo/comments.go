package gengo

import (
	"strings"

	"github.com/dave/jennifer/jen"
	"google.golang.org/protobuf/compiler/protogen"
)

// wrapColumn is where doc comment lines wrap, not counting the "// ".
const wrapColumn = 77

// doc builds a doc comment out of paragraphs.
type doc struct {
	lines []string
}

// text adds a paragraph the generator writes, wrapped.
func (d *doc) text(paragraph string) *doc {
	d.paragraph(wrap(paragraph, ""))
	return d
}

// proto adds a proto leading comment, dedented, with lines kept as the
// author broke them except those longer than wrapColumn, which wrap.
// Indented lines (code blocks, lists) are never wrapped.
func (d *doc) proto(c protogen.Comments) *doc {
	d.paragraph(protoLines(c))
	return d
}

// paragraphs adds lines protoLines returned (a proto comment's paragraphs)
// as they are.
func (d *doc) paragraphs(lines []string) *doc {
	d.paragraph(lines)
	return d
}

// deprecated adds a "Deprecated:" paragraph, unless the proto comment
// already has one. Go's tools only see a notice that starts a paragraph.
func (d *doc) deprecated(yes bool, in deprecation) *doc {
	if !yes && !in.whole {
		return d
	}
	for i, line := range d.lines {
		if strings.HasPrefix(line, "Deprecated:") && (i == 0 || d.lines[i-1] == "") {
			return d
		}
	}
	// The wordings protoc-gen-go uses for deprecated messages and fields.
	if in.whole {
		return d.text("Deprecated: The entire proto file " + in.path + " is marked as deprecated.")
	}
	return d.text("Deprecated: Marked as deprecated in " + in.path + ".")
}

// deprecation is what a declaration's deprecation notice names: the
// proto file it comes from, and whether that file is deprecated as a
// whole (option deprecated = true), which deprecates every declaration.
type deprecation struct {
	path  string
	whole bool
}

func (d *doc) paragraph(lines []string) {
	if len(lines) == 0 {
		return
	}
	if len(d.lines) > 0 {
		d.lines = append(d.lines, "")
	}
	d.lines = append(d.lines, lines...)
}

// String returns the comment with its "//" markers, ready for jen.Comment.
func (d *doc) String() string {
	var b strings.Builder
	for i, line := range d.lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		if line == "" {
			b.WriteString("//")
		} else {
			b.WriteString("// " + line)
		}
	}
	return b.String()
}

// code returns the comment as a jennifer statement.
func (d *doc) code() jen.Code { return jen.Comment(d.String()) }

// protoLines returns a proto comment's lines: with the comment markers'
// common indentation (and a Javadoc opening's star) removed, trailing spaces and blank lines trimmed, and
// long lines wrapped.
func protoLines(c protogen.Comments) []string {
	text := strings.TrimRight(string(c), " \t\n")
	// A Javadoc-style comment, /** ... */, reaches us with the opening's
	// second star in front of its text; protoc strips the stars that start
	// the lines after. Left there, the star reads as a list item and
	// indents the rest into a code block.
	text = strings.TrimPrefix(text, "*")
	if strings.TrimSpace(text) == "" {
		return nil
	}
	lines := strings.Split(text, "\n")
	indent := -1
	for i, line := range lines {
		line = strings.TrimRight(line, " \t")
		lines[i] = line
		if line == "" {
			continue
		}
		n := len(line) - len(strings.TrimLeft(line, " \t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	var out []string
	for _, line := range lines {
		if len(line) >= indent {
			line = line[indent:]
		}
		if line == "" {
			if len(out) > 0 && out[len(out)-1] != "" {
				out = append(out, "") // one blank line separates paragraphs
			}
			continue
		}
		if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			out = append(out, line)
			continue
		}
		// A deprecation notice written on the line after the text it
		// follows must start a paragraph of its own for Go's tools (go doc,
		// gopls, staticcheck) to see it.
		if strings.HasPrefix(line, "Deprecated:") && len(out) > 0 && out[len(out)-1] != "" {
			out = append(out, "")
		}
		out = append(out, wrap(line, "")...)
	}
	return out
}

// wrap breaks text into lines of at most wrapColumn characters at spaces,
// each starting with prefix. A word longer than a line gets a line of its
// own.
func wrap(text, prefix string) []string {
	words := strings.Fields(text)
	if len(words) == 0 {
		return nil
	}
	var (
		lines []string
		line  = prefix + words[0]
	)
	for _, w := range words[1:] {
		if len(line)+1+len(w) > wrapColumn {
			lines = append(lines, line)
			line = prefix + w
			continue
		}
		line += " " + w
	}
	return append(lines, line)
}

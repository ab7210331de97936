"""A candidate that differs from an earlier one only in comments, docstrings or spacing is the same kernel and must
not be evaluated again; any change to what the code does must keep it apart."""

from pathlib import Path

from kernelcraft.search.dedupe import digest, normalise, normalise_c

EXAMPLE = (Path(__file__).resolve().parents[1] / "workflow/templates/prompts/examples/fast_cpu.py").read_text()


def test_comment_docstring_and_whitespace_differences_are_duplicates():
    variant = (EXAMPLE.replace('"""Worked example', '"""Another docstring entirely. Worked example')
               .replace("    #pragma omp", "    // a C comment\n    /* and a\n       block one */\n    #pragma omp")
               .replace("y[i] = v > 0.f ? v : 0.f;", "y[ i ]=v>0.f  ?  v:0.f;   // clamp")
               .replace("        x = x.contiguous()", "        # a Python comment\n        x = x.contiguous()")
               .replace("def forward(self, x: torch.Tensor)", "def forward(self,x:torch.Tensor)"))
    assert variant != EXAMPLE
    assert normalise(variant) == normalise(EXAMPLE)
    assert digest(variant) == digest(EXAMPLE)


def test_a_changed_constant_in_python_or_in_the_kernel_is_not_a_duplicate():
    assert digest(EXAMPLE.replace("v > 0.f ? v : 0.f", "v > 1.f ? v : 0.f")) != digest(EXAMPLE)
    assert digest(EXAMPLE.replace("relu_k(x, y, x.numel())", "relu_k(x, y, x.numel() - 1)")) != digest(EXAMPLE)
    assert digest(EXAMPLE.replace("schedule(static)", "schedule(dynamic)")) != digest(EXAMPLE)


def test_spacing_that_separates_tokens_is_kept():
    assert normalise_c("int a = b - -c;") != normalise_c("int a = b--c;")
    assert normalise_c("unsigned int x;") != normalise_c("unsignedint x;")
    assert normalise_c("int a = b - -c;") == normalise_c("int a=b- -c ;")


def test_comment_markers_inside_c_string_literals_are_code():
    assert normalise_c('const char* s = "a // b"; // note') == 'const char*s="a // b";'


def test_preprocessor_directives_keep_their_own_lines():
    code = "#define N 4\nint x[N];\n  #include <a.h>\nint y;"
    assert normalise_c(code) == "#define N 4\nint x[N];\n#include<a.h>\nint y;"


def test_a_file_that_does_not_parse_is_compared_by_its_collapsed_text():
    assert digest("def f(:\n  pass") == digest("def f(:   pass")
    assert digest("def f(:\n  pass") != digest("def g(:\n  pass")

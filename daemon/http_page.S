/*
 * http_page.S - the page of --http (daemon/page/) embedded in blip2d, so
 * GET / needs no file at run time: each file's bytes between a start and
 * an end symbol (http.c declares them).  The assembler finds the files on
 * its include path (Makefile.am: -Wa,-I$(srcdir)/daemon/page).
 */
    .section .rodata
    .global b2d_page_html, b2d_page_html_end
    .global b2d_page_js, b2d_page_js_end
    .global b2d_page_css, b2d_page_css_end
b2d_page_html:
    .incbin "index.html"
b2d_page_html_end:
b2d_page_js:
    .incbin "app.js"
b2d_page_js_end:
b2d_page_css:
    .incbin "app.css"
b2d_page_css_end:
    .section .note.GNU-stack,"",@progbits

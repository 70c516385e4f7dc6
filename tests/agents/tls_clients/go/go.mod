module custody.test/https_post

go 1.19

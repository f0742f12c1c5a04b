module zstor

go 1.19

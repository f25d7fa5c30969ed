// Fixed RSA keys for the JWT tests (generated with `openssl genpkey`): RSA key generation is not
// available without CryptoExtras, and fixed keys keep the tests fast. They protect nothing.

enum JWTTestRSAKeys {
    static let pem1 = """
        -----BEGIN PRIVATE KEY-----
        MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCx+3kI57JeZyl3
        Kh7y8RCwwIEzyxV9qFY9wkqx5jvEZQpgRproeEePEP1VAhWnJEewTPSPWEWySDSH
        u3pUvF5i9JR19QkBVg7QZHQtWTu/CV00qmkT0iFOU2h0PRpr/vKIJBQlEi+ypz4J
        U6wIDq2ylbA3EpGoH69Sw39O7Uhh5Ji83HD5xbiCQ9fIWs9C8u/i/qFh92SosoEO
        lW48ePzvPg+1fxl6WQkDT/0VvdIeexyL6vpYzXZQMSvPFZRFc55MJNoFSZtvUX66
        45GON04V6qN4/5t7aeXOpCG+qYTvjQ1DBZVFAFPWUoin9McfYE8EmiOv/ZQ/GM12
        ic48xviJAgMBAAECggEAExAvzRPgB3t+NfzFdtj6JCxiSlVgtmZO4muKi5Zw5V67
        J0e4tNiZNYoo0C+aeR4KLah4c1gNkwRn1/ftKOFKLMgslJvLvKBmksyHownRO+t5
        V7g+6/gQSC7n27dlupaCjLFslPHnOPfvzZjwLqa/1QZyatuqzTqjkTZOTvpcS9u9
        iPEQ3yzbW/jkHU8xkb8Lp4Li+ns0OBiScJ8liQxYFqiZAujpGO3VZLEM2cwhXAg7
        XwHk0eqlEfSnq90iYMcw62MfmeDP49C1V5wp/owNmFH1O2ABizQ/LTYMNSV/EKhs
        jXDewwjR5QBan8nYotP2QO+tsjW3l46K+mkLgTyqOQKBgQD2yx8UcL6SwPmjLT2+
        WojmjhvDaBNbfEctp/IkQ7ScNJi71JAaRF/69eqLiZ9Yzf2BPrzld17fSHx33Jq6
        /9mfB185sGUdZ2hwYGI+mo5B6FWCXABRELxs5dY629QQ7Tchzas2NDwt8xHQzecZ
        DdQqEQOF1IJyP6wmbMUWCgQvrQKBgQC4nzRsjhIWUPjNOZBQrXTfIkhmRMsL89gK
        gkdhFiXf/Y+oiwgf1sVY3ojarVyq3vmW4UGQEHq3d2LzfsSno77zvcb+jSaC28c+
        J2R4+207Wz2nkL5p7+2Ehs067Hj+khT1lW5Zc964B2KmFfTKw5JErxm4igKyyo51
        cN4pCz1XzQKBgAiY3NVOdCUSmd+oVM1LxBcb/jWZa4s1UhlyD0paHXGPl357kiWI
        GjvY0znXKnjifCFDeTsZJHHsyYE3ayB2hzM2A4gz7+HNV2MKyIFbyvbazBfFcrFg
        PuAgRY05WTLZwKDp1DwIJ8yF+inm8lT6GVj5zMCdvYmTVEDmaxswcCLlAoGARHI5
        tFlDmWRxqVxDBbYZEzSZlNjCUm8X1GWSYwscBZvy67CH1Y4BYj42jKQjK/I4pFhk
        vy1s4aHwXIfODrylaaYdJXhdI7ypdICUPkowqAXeqMX/4jSiYTS817Cd9vtfq+C3
        pZBQrPeH+j0/oQC6tJ4aMhFwiKqSADZVFvBk0K0CgYB1cY4C4jO+olTo8K3CTIDc
        d+a7CHr678Z7o7kRKuTdTU2No/H6t/rClfzffxeXx60FDTe4+exeW4JkgHGEHFQD
        2jrsbBYx09liRxKNtVs2K7es2wgFQt6QmN/GlP32C58MViYiVhL2QC+PPXTRnuXE
        nQbSiOq4jY/hy4iDpHd3Tg==
        -----END PRIVATE KEY-----
        """

    static let pem2 = """
        -----BEGIN PRIVATE KEY-----
        MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCjgd7Z4bZVkovm
        2ISO/VYlqtbJsZPs0JvmQ4yGo/rVFqZjpVXT5fFCv7Phyhq6/nVT6/5b+aPtckol
        9kF/R20fXoZOKmiDA+xe6Etm3JqgGkdz1GPo0o/63SlPIJdfizdxcUDU7JkvzQAr
        mr0MgH9AoOz7Oi0bKvOO7aDuI9Q9DzIjkR7AuxFB+GByjZj32miNgQ/gLdxlzFDt
        p6ESJRlS/cXFEsrki1qeKjCeFCGknZxdjvRLg+Ko9HCQ8o2M7r9Js2xJydTy6oNn
        1psAvILyvWdsqe4/+10rRjUnm1qpbaCNnYl2yy4gYPSeL6XfTvSjlJkxhk0cDK58
        PjuIzJMbAgMBAAECggEAFXv6b6ABjgZELRWveqe9wBP4m7v3ofBZ68xdv1CgpDXm
        Wxrdx4q5RCSzBYIW4mc5Eh6Pkj+f0z1nPMxkws1R1gNc8RG6yyxNd2hdMADgrb+G
        OqliZLSg3T0I29rTyRFz5uC+EhGcofP1MnA8qFM3ZU3qlaremRPwY4wZz0YUnIkX
        663/eFxfHhJ++VgnTznmjNTXavppH0ZHEwwR/csjOwoLsQmDNj1XT6W8ymrqEbso
        1G38qHZXZAiDu/Y1wtx9t9mu05Nv9awPmuitwYO9hqJeWBorwYvr+Xmijk/FVvNa
        Nt5awgvC13RlY5IiwuQ9UdtV4/u+B/rVRB33BAkDsQKBgQDiIO8uh9jx6J+Kvyi0
        iqoq7Q2o/gfvgWtiadOCpw4CZeYfb8GRVcIR9SmE2bdwkM/+SONfJwko0Mb09YM8
        9VUv5b5pqLWeVgmphPgpwWWaLe75c88WxXkAcHnQANnJZIY8RY1z165SxyQJgXxF
        Dz2ufwLDsH+AHwWXpS9rie2jHQKBgQC5Gz//xPKgkxIrV7zyop+rPirbhcwknLtG
        gsinCJ3Os3X8S4fWkevIL1LJh8PLb+J4VosqkC9W5cvIaS0HbcZLOSqKaQsSIgpf
        jiedFLlgwr+TdJGOS8QiqJi052zaLllqHxml80SWSI2ntY7IYBTBfhJoBnAoQy42
        1s2iX2NBlwKBgC52ie7Lpv39yFpf8OM34sMzNi1VFRhXRVNRX05nOO+xNFmdQu6z
        6k56S2+qtJCCkNo069MvWCh0zYyjrbWmyzwuPrPDIJ5KG24jjkI2JMRLT+EdtJ1/
        Md+vPLhKlHVXHGXh/LCizoTfuj3hx0EBYrEqE81VxLz0oteH73hvPM7ZAoGAGKP7
        /PwmoCFzxblEObhUMONxqQ9CgY0rkNNQCownFaDmD9OuHW4HSPqjtpgQBEC8kPBU
        TjIrWxHz8pWtnNOMFe9iLlKVWrCVWOr/cvWTR8Ik5mgaCCslzMdMrKgx4UlSNcI2
        E9UySB8YXD7a5umDWc6CfL5+p51pxXsKnJa+C7kCgYEAoEiGfi6d3vzsZVavXmrE
        RTnCl4bZpJ8k+Aw5Xu81J78Brcko3CTWGk9IN4uDl1xNc2IYEKpsipySu0AmUkgg
        1/IMDD6Mu1Lk9JXnqXAhvG5p6WYDkmnBev8eyaieiySyAXJfVfUxbIHr+RR3Z4x4
        PzgB52b6y7KOGuzraP8vwXc=
        -----END PRIVATE KEY-----
        """

    static let pem3 = """
        -----BEGIN PRIVATE KEY-----
        MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDwwr4Q2fKEvnlG
        unT5n4vp0AyPTY9ThcF4GUtWmR81pHLjM3V1wZWAoAgrPsfmTxXmc9DUMEo3t2XI
        swQQZ4sZg4CdQJEBC1NUYXiEQid3vKPdZ8PjYVwHEhht75qKEGMPGpWRq6U3Ibqm
        Rf08KVkvFB76tWk4z7Kipbt920hmRacZ0zureN5B76tXxEdo/ogSOQJx0OmYzp32
        zI+JiTxBULzZy8OVvRg4uCL8xw7P8nQfviQzPx6aSG5QuuOp2i+VsienGc1anmR7
        E/2WVEfarKzDL/djL+O17Ib1XHsGhX4i4OD9DmW7UUx2+EA2VDVwZue5hTfsShvo
        eya2XvpFAgMBAAECggEABN1SciG334xqWTj+5bpJB+uJuBgvlgGaWUmy4X2M3rcY
        u9Qi1+3A47ftYlOi6K7euOjMe9+76Cie+Fv8RYk/YL/CSKsbeENufBfPaRCzHnK5
        IYntWySbnj2fMRLJyGdbW7Hu+rdWn74L45HUyN3nAjysVubKc6OSruxH/7DUuNLp
        FiMQjqUhL6bedGtlPG6f+Kt41TqyVMJvCGWAIiLa2k6pV5kQ9VkdqMW5jYMYzGRK
        ZA6g+M7zhbxH5GYgIjo87sQoEPKORfnHBLEu7wXKHfOvvhhBe4CXWkGLI7kMxQUI
        DCjqDkLjJ/ORoOYAuR2StoPWGP7EAcgPTRcY/i+NYwKBgQD/0d3LCsZ1zL8nmyD6
        VXeGeT/phhJTXoD3X9jMt0Wk6uh6JFqimZwwPb7/9VNzX3wp6xHb/Lloq2ovB8An
        wOnjHNVE7V2UqIGXX/7bpNcXqgdzKwOQT38CYBil4b/pMnG/nqJr48jZVWlXGScG
        qLruv3PbVhWMm1guC75wcBjhxwKBgQDw7ikNswbs7jPxErsErPX+7j38hurpduSd
        03UwaZxdFPZs3mnFfggHnH1oY3KEHPV6X8gVaWo56Jc9DyusFdkZuO8nydKKXwkd
        cJ+5qrg5KlX0ZIXNbVElWipZiJqCSMHrt/eHRRqc9XlTlqmynmSxCZTPljYnQ2Yr
        HlwYhxADkwKBgQCou+laEmpiqsDuw8CVvafP18vTIO6XdL8F639ZUA0swRDD95Sc
        qUs++osv0sXPVIzWLUmjW2eD5YRtLuSMlA7xEUSOaS4PbrHDgbrdbzW8UxcE3LtG
        BVlV3MKFL4jgrLggVub02NLSnyaTH3EBUGu0LC2j33zpOFGKVY6wJRAUYwKBgQCF
        yxwNOX/9DwLVOxuUKyCoo1DU7W+Cmr22T3limyN0JXH7Xz/JpoV7BJI36BHt/87q
        WEpaaaHN6rYh+Ey+UZuwRxy4McGzibccHDD3ADExvarh/vi27aAEaB/gfJWhCBp4
        dj8FZYCz7TWlD6PJR2CPV8zFwprsDuerxj5KeKaR9QKBgQDfmJiHRqkZdXCnFXKn
        Q9tuveXk7t6TpAb6hLPrB2RXWyJiHtisG2ihTd0/rvb6o7BddyiDohCaUMaBWVLA
        9mAwzbKIuIuN2UkOeAagZ4HoUZZIntlqVTKRGtpbIEXspzPdNu1xaA7mB48XurBU
        8m3ggSk29sRD4KXY5PnkBUP5VQ==
        -----END PRIVATE KEY-----
        """

    /// The modulus of a 1024-bit RSA key: too small, it must be dropped from a JWKS.
    static let modulus1024 =
        "pGsP97eygzILU5JwDzlDsXLXZjSLdsWhkHJ4K0fxm8TaWVA6dllgovss7GKSQJOxcJ86wxHP4mx4_Ey0MJaIB0xtqkyQtU8mmyYZ8ul65qs_UdNCGaN4vJgiUiM5qV6eaSpBhV5s7KhZsYyIhwQiNcHzkP9s-iI4C_s7e-e7V4E"
}

// Stub SecureStorageBackup.exe that reads the password with Console.ReadLine, twice, as a plain .NET console
// program would. Backup writes a key file holding the SHA-256 of the UTF-8 bytes it read, so a test can check
// byte for byte which password reached the tool (a BOM, a stray "\r" or a code page change all alter it);
// Restore checks a file against the password it reads. C# 5 (Add-Type on Windows PowerShell 5.1).
using System;
using System.IO;
using System.Security.Cryptography;
using System.Text;

public static class KeyfleetReadlineStub
{
    public static int Main(string[] args)
    {
        if (args.Length != 2 || (args[0] != "Backup" && args[0] != "Restore"))
        {
            Console.Error.WriteLine("usage: SecureStorageBackup.exe Backup|Restore <file>");
            return 2;
        }
        Console.WriteLine("input: " + (Console.IsInputRedirected ? "redirected" : "console"));
        Console.Write("Please enter the password: ");
        string first = Console.ReadLine();
        Console.Write("Please re-enter your password: ");
        string second = Console.ReadLine();
        if (first == null || second == null)
        {
            Console.Error.WriteLine("No password was given (end of input).");
            return 3;
        }
        if (first != second)
        {
            Console.Error.WriteLine("The passwords do not match.");
            return 4;
        }
        if (first.Length < 8)
        {
            Console.Error.WriteLine("The password must be at least 8 characters long.");
            return 5;
        }
        byte[] expected = KeyContent(first);
        if (args[0] == "Backup")
        {
            File.WriteAllBytes(args[1], expected);
            Console.WriteLine("Secure Storage Backup Complete");
            return 0;
        }
        if (!File.Exists(args[1]))
        {
            Console.Error.WriteLine("The backup file " + args[1] + " does not exist.");
            return 7;
        }
        if (Convert.ToBase64String(File.ReadAllBytes(args[1])) != Convert.ToBase64String(expected))
        {
            Console.Error.WriteLine("The password is not the one this backup file was made with.");
            return 6;
        }
        Console.WriteLine("Secure Storage Restore Complete");
        return 0;
    }

    // "KEYFLEET-STUB-KEY sha256:<hex of the SHA-256 of the UTF-8 password>\n" in ASCII
    static byte[] KeyContent(string password)
    {
        StringBuilder hex = new StringBuilder();
        using (SHA256 sha256 = SHA256.Create())
        {
            foreach (byte b in sha256.ComputeHash(new UTF8Encoding(false).GetBytes(password)))
            {
                hex.Append(b.ToString("x2"));
            }
        }
        return Encoding.ASCII.GetBytes("KEYFLEET-STUB-KEY sha256:" + hex + "\n");
    }
}
